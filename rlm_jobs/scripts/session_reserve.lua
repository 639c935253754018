-- Add a job to an open session, if the session's last job is the one the caller saw there
-- (finished, or none): the new job becomes its busy job and the session no longer expires
-- on its idle TTL until the job is over (it is held for the job's time limit instead).
-- KEYS[1]: the session hash, KEYS[2]: its job list
-- ARGV[1]: the busy job the caller saw ('' for none), ARGV[2]: the new job id,
-- ARGV[3]: now (Unix s), ARGV[4]: how long to hold the session (s), ARGV[5]: most jobs
-- Returns {'ok', earlier job ids...}, or {'missing'}, {'ended', reason}, {'changed'},
-- {'full'}.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status ~= 'open' then
  return {'ended', redis.call('HGET', KEYS[1], 'reason') or ''}
end
local busy = redis.call('HGET', KEYS[1], 'busy') or ''
if busy ~= ARGV[1] then return {'changed'} end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[5]) then return {'full'} end
local earlier = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'busy', ARGV[2], 'last_used_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local reply = {'ok'}
for _, job in ipairs(earlier) do reply[#reply + 1] = job end
return reply
