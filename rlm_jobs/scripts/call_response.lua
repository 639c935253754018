-- An llm worker keeps (or forgets) the provider's id of a call's background response in
-- the call's record, for the worker that takes the call over if this one dies. Only the
-- worker holding the call's claim writes: a worker whose claim lapsed (it stalled, and
-- another took the call) must not clobber the new owner's id. A record that is gone (the
-- call was answered or given up meanwhile) is not brought back.
-- KEYS[1]: the call's record, KEYS[2]: its claim
-- ARGV[1]: the claim token, ARGV[2]: the response id, or '' to forget it
-- Returns 1 (written), 0 (the record is gone) or 2 (another worker holds the claim).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 2 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'response')
else
  redis.call('HSET', KEYS[1], 'response', ARGV[2])
end
return 1
