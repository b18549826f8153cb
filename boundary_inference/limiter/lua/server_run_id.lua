-- Shared prelude of the scripts that read the limiter's sync marker (prepended when loaded).
-- The run id of this Redis server process: a new one after every restart and on another server
-- (a failover). INFO may be refused by a managed Redis; then only the marker's absence is seen.
local function server_run_id()
  local info = redis.pcall('INFO', 'server')
  if type(info) ~= 'string' then return 'unknown' end
  return string.match(info, 'run_id:(%x+)') or 'unknown'
end
