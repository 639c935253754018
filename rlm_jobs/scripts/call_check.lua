-- An orchestrator looks at the calls it still waits for.
-- KEYS[1]: the job's calls hash, KEYS[2]: the llm queue; KEYS[1 + 2i], KEYS[2 + 2i]: call
-- i's record and claim. ARGV[i]: call i's id.
-- Returns {queue length, then per call: 'C' (a live worker runs it), 'U' (not taken yet),
-- 'L' (taken by a worker whose claim lapsed: it died; the flag is cleared so the call is
-- sent once more), 'X' (no record and no result: lost), or its stored result (answered,
-- though the reply did not arrive)}.
local out = {redis.call('LLEN', KEYS[2])}
for i = 1, #ARGV do
  local record, claim = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  if stored then
    out[i + 1] = stored
  elseif redis.call('EXISTS', record) == 0 then
    out[i + 1] = 'X'
  elseif redis.call('EXISTS', claim) == 1 then
    out[i + 1] = 'C'
  elseif redis.call('HGET', record, 'claimed') then
    redis.call('HDEL', record, 'claimed')
    out[i + 1] = 'L'
  else
    out[i + 1] = 'U'
  end
end
return out
