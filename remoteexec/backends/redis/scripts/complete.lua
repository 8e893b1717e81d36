-- COMPLETE: end the leases of a batch of one queue's tasks, the same steps as
-- commands.complete_batch.
-- KEYS: leases.
-- ARGV: reply TTL in ms, claim-list prefix, then per task: token, reply list key
-- ("" for none), reply element.
-- A task whose claim list is gone (its lease was taken over, or it is twice in the
-- batch) changes nothing. Returns 1 or 0 per task.
local out, boxes = {}, {}
for i = 3, #ARGV, 3 do
  local held = redis.call('DEL', ARGV[2] .. ARGV[i])
  redis.call('ZREM', KEYS[1], ARGV[i])
  if held == 1 and ARGV[i + 1] ~= '' then
    redis.call('RPUSH', ARGV[i + 1], ARGV[i + 2])
    boxes[ARGV[i + 1]] = true
  end
  out[#out + 1] = held
end
for box in pairs(boxes) do redis.call('PEXPIRE', box, ARGV[1]) end
return out
