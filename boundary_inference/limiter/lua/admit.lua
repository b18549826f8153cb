-- Atomic admission: the video's cooldown AND a slot in the global sliding window, both or neither.
-- KEYS[1] the video's cooldown key (string, value = token of the admission holding it, PX expiry)
-- KEYS[2] the global window (ZSET: member = token, score = admission time in ms)
-- KEYS[3] the sync marker: the run id of the server whose data this limiter state is
-- ARGV[1] token (the run id; one token = one admission)   ARGV[2] cooldown ms   ARGV[3] limit
-- ARGV[4] window ms   ARGV[5] now in ms, or "" for the server's clock
-- Returns {allowed 1|0, reason "" | "cooldown" | "rate_limited" | "unsynced", retry_after_ms,
--          window_count}
-- (server_run_id() comes from server_run_id.lua, prepended when the script is loaded.)

-- A server that lost its data (restarted empty, or another server after a failover) has another
-- run id than the marker, or no marker at all: nothing is admitted until the cooldowns and the
-- window are rebuilt from the ledger (restore.lua), or a refusal could be forgotten.
if redis.call('GET', KEYS[3]) ~= server_run_id() then
  return {0, 'unsynced', 0, 0}
end

local token = ARGV[1]
local cooldown_ms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Trimming only forgets admissions that have aged out; it consumes nothing.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window_ms)
local count = redis.call('ZCARD', KEYS[2])

-- A replay of an admission this token already holds (a retried call whose first attempt ran but
-- whose answer was lost) is answered "allowed" again and takes nothing more.
local holder = redis.call('GET', KEYS[1])
if holder == token or (not holder and redis.call('ZSCORE', KEYS[2], token)) then
  return {1, '', 0, count}
end

if holder then
  local ttl = redis.call('PTTL', KEYS[1])
  -- Only this script writes the key, always with an expiry; a key without one is refused for a
  -- full cooldown rather than trusted.
  if ttl < 1 then ttl = math.max(cooldown_ms, 1) end
  return {0, 'cooldown', ttl, count}
end

if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local retry = 1
  if oldest[2] then retry = math.max(tonumber(oldest[2]) + window_ms - now, 1) end
  return {0, 'rate_limited', retry, count}
end

redis.call('ZADD', KEYS[2], now, token)
redis.call('PEXPIRE', KEYS[2], window_ms)
if cooldown_ms > 0 then
  redis.call('SET', KEYS[1], token, 'PX', cooldown_ms)
end
return {1, '', 0, count + 1}
