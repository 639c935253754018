-- An llm worker takes the calls of a chunk: claims each one still waiting and free.
-- KEYS[1]: the cancel flag of the job's root; KEYS[2i], KEYS[2i + 1]: call i's record, claim
-- ARGV[1]: the claim token, ARGV[2]: the claim's TTL (ms)
-- Returns {cancel reason or false, then per call: 'gone' (answered or given up), 'busy'
-- (another live worker runs it), or {job, model, messages, batch, cache, kind, response}}
-- (response: the id of the background response a worker that died left behind, if any).
local out = {redis.call('GET', KEYS[1])}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local record, claim = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('EXISTS', record) == 0 then
    out[i + 1] = 'gone'
  elseif redis.call('SET', claim, ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('HSET', record, 'claimed', '1')
    out[i + 1] = redis.call('HMGET', record, 'job', 'model', 'messages', 'batch', 'cache',
                            'kind', 'response')
  else
    out[i + 1] = 'busy'
  end
end
return out
