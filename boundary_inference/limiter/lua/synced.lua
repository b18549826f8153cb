-- Whether the limiter's state belongs to this server (see admit.lua). KEYS[1] the sync marker.
if redis.call('GET', KEYS[1]) == server_run_id() then return 1 end
return 0
