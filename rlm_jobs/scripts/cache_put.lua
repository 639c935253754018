-- Store one reply in the response cache and keep the cache under its byte cap.
--
-- KEYS[1]  STRING  this reply (expires after the TTL)
-- KEYS[2]  ZSET    every cached digest, scored by when it was stored (ms): eviction order
-- KEYS[3]  HASH    digest -> bytes of its reply, and "total"
-- ARGV[1]  the digest, ARGV[2] the reply, ARGV[3] TTL (ms), ARGV[4] byte cap,
-- ARGV[5]  the key prefix of replies (keys.cache_entry("")), to drop evicted ones
-- Returns how many replies were evicted to make room, or -1 if this one is over the cap.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])

local function drop(digest)
  local size = tonumber(redis.call('HGET', KEYS[3], digest) or '0')
  redis.call('HDEL', KEYS[3], digest)
  redis.call('HINCRBY', KEYS[3], 'total', -size)
  redis.call('ZREM', KEYS[2], digest)
  redis.call('DEL', ARGV[5] .. digest)
end

-- Replies Redis has expired leave their index rows and byte counts behind; a bounded
-- number go with every write, so one write never does unbounded work.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl, 'LIMIT', 0, 100)
for _, digest in ipairs(expired) do drop(digest) end

local size = string.len(ARGV[2])
if size > cap then return -1 end
-- Stored again (two workers answered the same request): counted once, aged from now.
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then drop(ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], size)
local total = redis.call('HINCRBY', KEYS[3], 'total', size)
local evicted = 0
while total > cap do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
  evicted = evicted + 1
end
return evicted
