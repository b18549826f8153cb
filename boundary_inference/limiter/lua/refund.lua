-- Undo one admission that a later guard refused: remove its window entry, and its cooldown only if
-- the cooldown still belongs to this token (never another admission's).
-- KEYS[1] cooldown key, KEYS[2] window ZSET; ARGV[1] token. Returns 1 if anything was given back.
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  removed = removed + 1
end
if removed > 0 then return 1 end
return 0
