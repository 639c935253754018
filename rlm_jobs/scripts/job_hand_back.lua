-- A run hands its job back unfinished (a warm shutdown): queued again, lease released, the
-- attempt not counted (the worker did not die), no longer watched by the reaper.
-- KEYS[1]: the job record, KEYS[2]: its lease, KEYS[3]: the running-jobs set
-- ARGV[1]: the lease holder, ARGV[2]: job id
-- Returns 1, or 0 when the job has its result or another holder has its lease.
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'QUEUED')
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
