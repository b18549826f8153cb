-- Atomic admission: per-video cooldown AND global sliding-window rate limit, taken together or not at all.
-- KEYS[1] cooldown key of the video, KEYS[2] global window ZSET
-- ARGV[1] token (run id), ARGV[2] cooldown ms, ARGV[3] limit, ARGV[4] window ms, ARGV[5] now ms ("" = server TIME)
-- Returns {allowed (1|0), reason ("" | "cooldown" | "rate_limited"), retry_after_ms, window_count}
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cooldown_ms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window_ms)
local count = redis.call('ZCARD', KEYS[2])

local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  return {0, 'cooldown', ttl, count}
end
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local retry = tonumber(oldest[2]) + window_ms - now
  if retry < 1 then retry = 1 end
  return {0, 'rate_limited', retry, count}
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], window_ms)
if cooldown_ms > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', cooldown_ms)
end
return {1, '', 0, count + 1}
