-- Rebuild the limiter's state from the ledger's record of admissions, then mark it synced with
-- this server. Merge only: nothing already here is removed or shortened, so a rebuild from an
-- older read of the ledger, or two rebuilds at once, can only add refusals, never admissions.
-- KEYS[1] the window ZSET   KEYS[2] the sync marker   KEYS[3..] one cooldown key per video
-- ARGV[1] window ms   ARGV[2] n   then n pairs (token, age ms) for the window
-- then the cooldown ms   then one pair (token, age ms) per cooldown key, its newest admission
-- Ages are the ledger's (its clock); they become scores in this server's clock here, so no two
-- clocks are ever compared. Returns {window entries added, cooldowns set}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_ms = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local i = 3
local added = 0
for _ = 1, n do
  local token, age = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if age < window_ms then
    added = added + redis.call('ZADD', KEYS[1], 'NX', now - age, token)
  end
end
if added > 0 then
  -- As admit.lua: the whole window expires once its newest entry has aged out.
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], math.max(tonumber(newest[2]) + window_ms, now + 1))
end
local cooldown_ms = tonumber(ARGV[i])
i = i + 1
local cooled = 0
for k = 3, #KEYS do
  local token, age = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local left = cooldown_ms - age
  -- PTTL: -2 no key, -1 a key without expiry (never written so; replaced by a bounded one).
  if left > 0 and redis.call('PTTL', KEYS[k]) < left then
    redis.call('SET', KEYS[k], token, 'PX', left)
    cooled = cooled + 1
  end
end
redis.call('SET', KEYS[2], server_run_id())
return {added, cooled}
