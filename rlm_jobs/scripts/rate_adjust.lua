-- Correct a token reservation once the reply said how many tokens the call really used.
--
-- KEYS[1]  HASH  the entry's GCRA state (see rate_take.lua)
-- ARGV[1]  microseconds to move the token clock by (negative: tokens given back)
-- An entry that expired meanwhile was idle: there is nothing left to correct.
if redis.call('HEXISTS', KEYS[1], 't') == 1 then
  return redis.call('HINCRBY', KEYS[1], 't', ARGV[1])
end
return 0
