-- Write a job's one result, only if none is there yet.
-- KEYS[1]: the job record, KEYS[2]: its lease, KEYS[3]: the running-jobs set
-- ARGV: status, reason, result, finished_at, tokens, cost_usd, record TTL (s), job id
-- Returns 1 when this call finished the job, 0 when it had a result, -1 without a record.
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reason', ARGV[2], 'result', ARGV[3],
           'finished_at', ARGV[4], 'tokens', ARGV[5], 'cost_usd', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[8])
return 1
