-- Add one call's usage to its batch's spend, atomically for every worker.
--
-- KEYS[1]  HASH  max_cost_usd, max_tokens (caps, either may be absent), cost_usd, tokens
--                (spent so far), exhausted_at (Redis time the first cap was reached)
-- ARGV[1]  tokens the call used, ARGV[2] what it cost (USD)
-- Returns false when the batch has no budget, else {tokens, cost_usd} spent so far.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local tokens = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
local cost = redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', ARGV[2])
local caps = redis.call('HMGET', KEYS[1], 'max_tokens', 'max_cost_usd', 'exhausted_at')
local over = (caps[1] and tokens >= tonumber(caps[1]))
  or (caps[2] and tonumber(cost) >= tonumber(caps[2]))
if over and not caps[3] then
  local clock = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'exhausted_at', clock[1] .. '.' .. string.format('%06d', tonumber(clock[2])))
end
return {tokens, cost}
