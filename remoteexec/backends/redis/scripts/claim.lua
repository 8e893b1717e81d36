-- CLAIM: one claim pass on a queue, the same steps as commands.claim_pass.
-- KEYS: leases, waiting, bells.
-- ARGV: now, lease deadline, claim-list prefix, the skiplist keeper, the last doorbell
-- kept (index), then one token per task wanted.
-- Moves up to one task per token from waiting into its claim list and leases it.
-- Returns: expired lease tokens (up to 100), the next lease due ([token, score] or {}),
-- the moved task elements (one per token, in order, as many as there were tasks), and
-- how many tasks are still waiting.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
redis.call('LTRIM', KEYS[3], 0, ARGV[5])
redis.call('ZADD', KEYS[1], 'NX', '+inf', ARGV[4])
local moved = {}
for i = 6, #ARGV do
  local elem = redis.call('RPOP', KEYS[2])
  if not elem then break end
  redis.call('RPUSH', ARGV[3] .. ARGV[i], elem)
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  moved[#moved + 1] = elem
end
local due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {expired, due, moved, redis.call('LLEN', KEYS[2])}
