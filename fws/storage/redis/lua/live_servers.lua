-- The ids of the servers whose liveness has not expired, by Redis's clock
-- (the servers' own clocks may disagree); expired ids are pruned.
-- KEYS[1]  P:servers   (ZSET server id -> liveness expiry)
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(now[1]) + tonumber(now[2]) / 1e6)
return redis.call('ZRANGE', KEYS[1], 0, -1)
