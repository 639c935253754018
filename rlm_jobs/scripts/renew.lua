-- Take or renew each key (KEYS[i], holder ARGV[i + 1], TTL ARGV[1] ms) only if it is free
-- or already that holder's; returns the positions (1-based) of the keys someone else has.
-- Job leases and sub-call claims both use it.
local taken = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[i + 1] then
    taken[#taken + 1] = i
  else
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
  end
end
return taken
