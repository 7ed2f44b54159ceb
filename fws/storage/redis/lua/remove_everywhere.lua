-- Remove a member from a group whichever server added it; how many sets held
-- it. The caller then publishes a remove notice on the group's channel, so
-- that the owning server's local mirror follows. One slot: {g:NAME}.
-- KEYS[1]  P:{g:NAME}:servers
-- ARGV[1]  P:{g:NAME}:members:
-- ARGV[2]  the member (a connection id)
local removed = 0
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  removed = removed + redis.call('SREM', ARGV[1] .. sid, ARGV[2])
end
return removed
