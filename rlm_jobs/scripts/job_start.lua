-- Count an attempt and mark the job running, unless it already has its result.
-- KEYS[1]: the job record, KEYS[2]: the running-jobs set
-- ARGV: started_at, worker, job id, '1' to track it for the reaper (roots) or '0'
-- Returns the attempt number, or -1 when the job has its result.
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return -1 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'started_at', ARGV[1], 'worker', ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3]) end
return attempts
