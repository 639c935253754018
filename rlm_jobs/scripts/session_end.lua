-- End a session on request: it takes no more jobs; its record stays, ended, so later
-- requests are told so, and expires with job records.
-- KEYS[1]: the session hash, KEYS[2]: its job list
-- ARGV[1]: now (Unix s), ARGV[2]: the reason, ARGV[3]: how long the ended record stays (s)
-- Returns {'ok', busy job or ''}, {'missing'}, or {'ended', reason} if it already was.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status ~= 'open' then
  return {'ended', redis.call('HGET', KEYS[1], 'reason') or ''}
end
redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_at', ARGV[1], 'reason', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {'ok', redis.call('HGET', KEYS[1], 'busy') or ''}
