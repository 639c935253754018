-- Open a session: its record, unless the id is taken.
-- KEYS[1]: the session hash
-- ARGV[1]: now (Unix s), ARGV[2]: idle TTL (s)
-- Returns 1, or 0 when a session of this id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'open', 'created_at', ARGV[1], 'last_used_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
