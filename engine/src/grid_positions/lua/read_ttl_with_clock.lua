local now = redis.call('TIME')
return {redis.call('PTTL', KEYS[1]), now[1], now[2]}
