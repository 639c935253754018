-- A session's job is over (finished, or never recorded): the session is free again and
-- expires after its idle TTL from now. A job that was never recorded also leaves the list.
-- KEYS[1]: the session hash, KEYS[2]: its job list
-- ARGV[1]: the job id, ARGV[2]: now (Unix s), ARGV[3]: idle TTL (s), ARGV[4]: '1' to drop
-- the job from the list (it was never recorded)
-- Returns 1 when the job was the session's busy one, else 0 (it moved on, or ended).
if redis.call('HGET', KEYS[1], 'busy') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'busy')
if ARGV[4] == '1' then redis.call('LREM', KEYS[2], -1, ARGV[1]) end
if redis.call('HGET', KEYS[1], 'status') == 'open' then
  redis.call('HSET', KEYS[1], 'last_used_at', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 1
