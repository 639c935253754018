-- Take a request slot of one rate-limit entry, or confirm one taken earlier.
--
-- GCRA without burst: slots are one emission interval apart (60 / rpm seconds), in the
-- order callers asked, for the whole cluster; a token limit moves its own clock by the
-- tokens reserved. A caller is given a slot in the future and sleeps until it, so taking
-- one is a single round trip however many callers wait. Times are Redis's (TIME), in
-- microseconds, so workers' clocks never matter.
--
-- A caller that overslept its slot (a busy machine wakes threads late) would start right
-- before the next one: the starts of the last second are kept too, and a call starts only
-- while they number fewer than a cap just under what the smoothness promise allows.
--
-- KEYS[1]  HASH  r: next free request slot, t: next free token time
-- KEYS[2]  STRING  end of a cool-down (set after a 429), absent when none
-- KEYS[3]  ZSET  starts of the last second (score: when)
-- ARGV[1]  microseconds between requests (0: no request limit)
-- ARGV[2]  microseconds per token (0: no token limit)
-- ARGV[3]  tokens to reserve
-- ARGV[4]  "1": confirm a slot taken earlier (a new one only if a cool-down began since)
-- ARGV[5]  starts allowed in any second (0: no such cap)
-- ARGV[6]  a token unique to this call (the member of its start)
-- Returns {microseconds to wait before starting (then confirm), 1 if cooling down}.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
local cooling = 0
if cool > now then cooling = 1 end

local function start()
  local cap = tonumber(ARGV[5])
  if cap == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 1000000)
  if redis.call('ZCARD', KEYS[3]) < cap then
    redis.call('ZADD', KEYS[3], now, ARGV[6])
    redis.call('PEXPIRE', KEYS[3], 2000)
    return 0
  end
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return math.floor(tonumber(oldest[2]) + 1000000 - now) + 1
end

if ARGV[4] == '1' and cooling == 0 then
  return {start(), 0}
end
local per_request = tonumber(ARGV[1])
local per_token = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'r', 't')
local slot = math.max(now, cool, tonumber(state[1] or '0'), tonumber(state[2] or '0'))
local horizon = slot
if per_request > 0 then
  horizon = slot + per_request
  redis.call('HSET', KEYS[1], 'r', string.format('%.0f', horizon))
end
if per_token > 0 then
  local t = slot + tonumber(ARGV[3]) * per_token
  redis.call('HSET', KEYS[1], 't', string.format('%.0f', t))
  horizon = math.max(horizon, t)
end
if horizon > now then
  -- Idle entries go away a minute after their last reservation.
  redis.call('PEXPIRE', KEYS[1], math.floor((horizon - now) / 1000) + 60000)
end
if slot > now then
  return {math.floor(slot - now), cooling}
end
return {start(), cooling}
