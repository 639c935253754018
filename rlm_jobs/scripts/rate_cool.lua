-- Cool a rate-limit entry down for the whole cluster after a 429 with Retry-After.
--
-- KEYS[1]  STRING  end of the cool-down (microseconds of Redis time), with a TTL
-- ARGV[1]  microseconds to cool down for
-- A later end wins; an earlier one never shortens a cool-down in force.
-- Returns the microseconds left of the cool-down now in force.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local wanted = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if wanted > current then
  redis.call('SET', KEYS[1], string.format('%.0f', wanted), 'PX',
             math.ceil(tonumber(ARGV[1]) / 1000) + 1)
  return math.floor(wanted - now)
end
return math.floor(current - now)
