-- An llm worker answers a call: the result is kept for good in the job's calls hash, the
-- waiting orchestrator is told, and the call ends. One script, so a worker that dies
-- around it leaves the call either answered and ended or still waiting, never both.
-- KEYS[1]: the call's record, KEYS[2]: its claim, KEYS[3]: the job's calls hash
-- ARGV[1]: call id, ARGV[2]: stored result, ARGV[3]: reply, ARGV[4]: the prefix of reply
-- lists, ARGV[5]: a reply list's TTL (s)
-- Returns 1, or 0 when the call was answered already or given up (nothing is written).
-- The reply list is named from the record's waiter: the orchestrator waiting now, which a
-- resumed job's new attempt may have changed after this worker took the call.
local waiter = redis.call('HGET', KEYS[1], 'waiter')
if not waiter then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local replies = ARGV[4] .. waiter
redis.call('RPUSH', replies, ARGV[3])
redis.call('EXPIRE', replies, ARGV[5])
redis.call('DEL', KEYS[1], KEYS[2])
return 1
