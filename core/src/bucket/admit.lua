-- sigmesh: take tokens from global token buckets, then places in global session counts, in one
-- atomic step. The bucket math is core's (core/src/bucket/global.rs is its Rust twin): integer
-- tokens, credit below a token in units of 1/per_us token, every elapsed microsecond adds `rate`
-- units, all values below 2^53 (exact in Lua's doubles).
--
-- KEYS: nb bucket keys (hashes w, f, l), then np place keys (sorted sets: member -> expiry ms)
-- ARGV[1]  now in microseconds, or "" for Redis TIME
-- ARGV[2]  nb
-- then per bucket: rate, per_us, burst, n (tokens wanted)
-- then: lease_ms, member (the session's id), and per place: max
-- Returns { per bucket: granted, remaining, retry_after_us, reset_us }, then full: 0 when every
-- place was taken, else the 1-based index of the place that was full (none is kept then).
-- A bucket that grants nothing stops there: no later bucket is touched, no place is taken.

local function int(x) return string.format('%.0f', x) end
local function ceil_div(a, b)
  local q = math.floor(a / b)
  if q * b < a then q = q + 1 end
  if (q - 1) * b >= a then q = q - 1 end
  return q
end
local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local nb = tonumber(ARGV[2])
local out = {}
local a = 3
for i = 1, nb do
  local rate, per, burst, n =
    tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local key = KEYS[i]
  local s = redis.call('HMGET', key, 'w', 'f', 'l')
  local whole, frac, last = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
  if whole == nil or frac == nil or last == nil then
    whole, frac, last = burst, 0, now
  end
  if now > last then
    local elapsed = now - last
    last = now
    if whole >= burst then
      whole, frac = burst, 0
    else
      local need = (burst - whole) * per - frac
      if elapsed >= ceil_div(need, rate) then
        whole, frac = burst, 0
      else
        local credit = frac + elapsed * rate
        local tokens = floor_div(credit, per)
        whole = whole + tokens
        frac = credit - tokens * per
      end
    end
  end
  local granted = math.min(n, whole)
  whole = whole - granted
  local retry = 0
  if granted == 0 and n > 0 then retry = ceil_div(per - frac, rate) end
  local reset = ceil_div((burst - whole) * per - frac, rate)
  redis.call('HSET', key, 'w', int(whole), 'f', int(frac), 'l', int(last))
  -- A full bucket is the same as none: the key lives until the bucket would be full, and 1 s.
  redis.call('PEXPIRE', key, int(ceil_div(reset, 1000) + 1000))
  out[#out + 1] = granted
  out[#out + 1] = whole
  out[#out + 1] = retry
  out[#out + 1] = reset
  if granted == 0 and n > 0 then
    out[#out + 1] = 0
    return out
  end
end
local lease = tonumber(ARGV[a])
local member = ARGV[a + 1]
a = a + 2
local now_ms = math.floor(now / 1000)
local full = 0
local taken = {}
for j = nb + 1, #KEYS do
  local key = KEYS[j]
  local max = tonumber(ARGV[a])
  a = a + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now_ms))
  if redis.call('ZSCORE', key, member) == false and redis.call('ZCARD', key) >= max then
    full = j - nb
    break
  end
  redis.call('ZADD', key, int(now_ms + lease), member)
  redis.call('PEXPIRE', key, int(lease))
  taken[#taken + 1] = key
end
if full > 0 then
  for _, key in ipairs(taken) do redis.call('ZREM', key, member) end
end
out[#out + 1] = full
return out
