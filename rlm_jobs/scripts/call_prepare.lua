-- Before calls are sent: record each one that has no result yet; return those that have.
-- KEYS[1]: the job's calls hash; KEYS[1 + i]: call i's record
-- ARGV[1]: job id, ARGV[2]: model, ARGV[3]: waiter id, ARGV[4]: record TTL (s),
-- ARGV[5]: the job's batch id ('' for none), ARGV[6]: its cache choice ('1', '0', or ''
-- for the deployment's), ARGV[7]: 'root' or 'sub', ARGV[7 + i]: call i's id,
-- ARGV[7 + n + i]: call i's messages (JSON)
-- Returns, per call, false (recorded, to be sent) or its stored result (answered already).
-- A record left by an earlier attempt keeps its claim flag; only its waiter changes, so the
-- worker still running it answers this attempt.
local n = #KEYS - 1
local out = {}
for i = 1, n do
  local stored = redis.call('HGET', KEYS[1], ARGV[7 + i])
  if stored then
    out[i] = stored
  else
    local record = KEYS[1 + i]
    redis.call('HSET', record, 'job', ARGV[1], 'model', ARGV[2], 'messages', ARGV[7 + n + i],
               'waiter', ARGV[3], 'batch', ARGV[5], 'cache', ARGV[6], 'kind', ARGV[7])
    redis.call('EXPIRE', record, ARGV[4])
    out[i] = false
  end
end
return out
