-- The members of one group over its live servers, pruning servers whose
-- liveness expired (a SIGKILLed server) on the way. One slot: {g:NAME}.
-- KEYS[1]  P:{g:NAME}:servers   (ZSET server id -> liveness expiry, Redis clock)
-- ARGV[1]  P:{g:NAME}:members:  (each live server's set: this plus its id)
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(now[1]) + tonumber(now[2]) / 1e6)
local keys = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  keys[#keys + 1] = ARGV[1] .. sid
end
if #keys == 0 then return {} end
return redis.call('SUNION', unpack(keys))
