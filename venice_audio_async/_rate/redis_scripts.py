"""The Lua scripts of :class:`~._rate.redis_budget.RedisBudget`: every rule runs inside Redis.

Each script is atomic (Redis runs one at a time), reads the time from the server's own
``TIME`` (one clock for every machine), and works in microseconds of that clock. Windows and
pauses come in as milliseconds of real time, so a time-scaled test shrinks them.

Keys (``P`` is the namespace prefix, with a hash tag so all of them share one cluster slot):

* ``P:session`` (hash): ``paused_until``, ``reason``, ``paused_us``, ``failure_paused_until``,
  ``failure_paused_us``, ``failures``, ``rate_limited``, ``granted``;
* ``P:failures`` (sorted set): the failed requests of every process, scored by time;
* ``P:ep:E`` (hash): endpoint ``E``'s pause (``paused_until``, ``paused_us``), allowance
  (``allowance``, ``allowance_until``) and its rate state: ``stated`` (a limit the API
  stated), ``limit`` (the effective limit, absent: the ceiling), ``next_paced``,
  ``last_429``, ``next_recovery``;
* ``P:log:E`` (sorted set): the grants of ``E`` inside its window, scored by time.

A pooled limit is one more entity ``pool`` (``P:ep:pool``, ``P:log:pool``) with the same
rate state; an endpoint it covers counts against both. An assumed pool (``configured``
negative) also keeps ``stated:E``, the figure each endpoint ``E`` last stated, and
``refuted`` (``1``: two endpoints stated different figures, so the pool is no pool): a
refuted entity is no rule for any process that only assumed it (no limit, no grants
logged; its row reads limit ``-1``), for good.

The rate rule of each entity (``ceiling_of``, ``rate_limited``, ``state_limit``, ``recover``,
``ready``, ``grant``) mirrors :class:`~._rate.endpoint_rate.EndpointRate` step for step; a
test drives both through one script (tests/rate/test_rate_machine.py).

**ACQUIRE** ``KEYS = session, ep hash, ep log[, pool hash, pool log]``, ``ARGV = member,
client, ttl_ms, model ('': none), own (configured, window_ms, burst)[, pool (configured,
window_ms, burst), reserve]`` (``configured`` 0: no limit; negative: not set by the user, so
a stated limit replaces it; ``reserve``: the pool's grants kept for the asking process's
``queue`` calls waiting, so they come before its polls). If a request may go now (no pause,
no full failure window, the allowance not spent, each entity's sliding log and pacing have
room), the grant is logged under ``member`` in every entity's log and the reply starts ``1,
us``, where ``us`` is how long until the *next* grant could go; otherwise nothing is written
but state upkeep (pruning, recovery) and the reply starts ``0, us`` with the wait. The third
field counts the *other* clients that asked for this endpoint within the last few pacing
intervals (kept in
``P:ep:E:clients``). Then, always:
``now_us, session_paused_us, reason, failure_paused_us, endpoint_paused_us, allowance
(-1: none), allowance_us``, and per entity ``{limit (0: none), calm (0/1), age_us...}``:
the ages of the grants inside its window, oldest first. Every ``*_us`` after ``now_us`` is
relative to it (0: not paused).

**LEARN** ``KEYS = session, failures, ep hash, ep log[, pool hash, pool log]``, ``ARGV =
member, ttl_ms, own (configured, window_ms, burst), pool (configured, window_ms, burst) or
three zeros, is_429 (a rate-limit 429), pause_ms (-1: none), reason, stated (0: none),
allowance (-1: none), allowance_ms, endpoint_pause_ms (-1: none), failure (0/1),
failure_threshold, failure_window_ms, model, model_pause_ms (-1: none), endpoint``: what one answer
taught, with the rules of ``LocalBudget``; ``endpoint`` (its name, last) is what an assumed
pool records a stated figure under. Replies ``refuted_by ('': none), refuted_figure`` (the
other endpoint and the figure it stated, when this answer refuted the assumed pool), then
like ACQUIRE without its first three fields.

**BACKFILL** ``KEYS = session, failures, log...``, ``ARGV = member_prefix, ttl_ms, pause_ms,
reason, failure_threshold, failure_window_ms, n_failures, failure_age_us..., then per log:
n, age_us...``: after an outage, log the grants and failures a process made meanwhile.

**RELEASE** ``KEYS = logs``, ``ARGV = member``: give back a grant whose waiter was cancelled.

**DEMAND** ``KEYS = demand hash, log...``, ``ARGV = client, ttl_ms, stale_ms, n, d_1..d_n,
window_ms...`` (one window per log): publish this client's demand for an endpoint's tokens
(the poll policy's demand at ``n`` look-ahead horizons, plain numbers) and read the others':
each client's entry is ``"written_us,d_1,...,d_n"`` under its ``client`` field of
``P:demand:E``; entries older than ``stale_ms`` are dropped. Replies ``others, sum_1..sum_n``
(the other live clients and their summed demand, the sums as strings: a Lua number would
reach the client truncated), then per log ``{age_us...}``: the ages of its grants inside its
window, oldest first (read only: the window as it stands for pricing, without a grant).

**RUNS** ``KEYS = runs list, runs sequence``, ``ARGV = client, ttl_ms, cursor, n, then n
(model, seconds_ms, hint_ms)``: append this client's finished jobs' run times (real
milliseconds; ``hint_ms`` -1: none) to ``P:runs``, each under the next number of
``P:runs:seq``, keeping the last :data:`RUNS_KEPT`; reply ``last``, then the other clients'
entries numbered above ``cursor`` as ``model, seconds_ms, hint_ms`` (strings): what a
process has not heard yet, its next cursor ``last``.

**RULE_STEP** ``KEYS = hash, log``, ``ARGV = now_us, configured, window_ms, burst, step,
value, member``: one step of one entity's rule at a time it is told (``step``: ``grant``
if one may go now with ``value`` grants kept back, ``429``, ``state`` the limit
``value``); replies ``granted (0/1), wait_us (-1: none), limit (0: none), calm (0/1)``.
The scripts above never call it: it lets the rule be compared with
:class:`~._rate.endpoint_rate.EndpointRate` step for step.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "BACKFILL", "DEMAND", "LEARN", "RELEASE", "RULE_STEP", "RUNS", "RUNS_KEPT"]

#: Every script reads the time from the server's own clock ...
_CLOCK = r"""
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
"""

#: ... but RULE_STEP, which is told it (a test plays a script of steps on virtual time).
_TOLD_CLOCK = r"""
local now = tonumber(ARGV[1])
"""

_RULES = r"""
local INF = math.huge

local function num(value, default)
  local n = tonumber(value)
  if n == nil then return default end
  return n
end

local function set_or_clear(key, field, value)
  if value == nil or value == INF or value == -INF then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, string.format('%.0f', value))
  end
end

local function rel(t)
  if t == nil or t <= now then return 0 end
  return math.ceil(t - now)
end

-- EndpointRate.recover: every quiet window/4 a tenth of the ceiling back; at the ceiling (or
-- with none: a learnt limit is dropped) calm no more.
local function recover(e, t)
  if e.limit == nil or t < e.next_recovery then return end
  if e.ceiling == nil or e.limit >= e.ceiling then
    e.limit = e.ceiling
    e.calm = false
    e.next_recovery = INF
    return
  end
  e.limit = math.min(e.ceiling, e.limit + math.max(1, math.floor(e.ceiling / 10)))
  e.next_recovery = t + e.window / 4
end

-- EndpointRate.ceiling: the configured limit (negative: not the user's own), replaced by a
-- stated one (only capped by it when the configured one is the user's own).
local function ceiling_of(e)
  if e.stated == nil then return e.configured end
  if e.configured == nil or not e.explicit then return e.stated end
  return math.min(e.configured, e.stated)
end

-- One rate entity: a sliding log plus its rate state (_rate.endpoint_rate.EndpointRate).
local function load(hkey, lkey, configured, window_ms, burst_setting)
  local e = {h = hkey, l = lkey, window = window_ms * 1000, burst_setting = burst_setting}
  local f = redis.call('HMGET', hkey, 'stated', 'limit', 'next_paced', 'last_429',
                       'next_recovery', 'calm', 'learnt', 'refuted')
  e.explicit = configured > 0
  -- An assumed pool the API's figures refuted (LEARN): no rule at all for a process that
  -- only assumed it (one the user gave or the key listed still holds).
  e.refuted = f[8] == '1' and not e.explicit
  if e.refuted then
    e.calm, e.scores = false, {}
    e.next_paced, e.last_429, e.next_recovery = -INF, -INF, INF
    return e
  end
  if configured ~= 0 then e.configured = math.abs(configured) end
  e.stated = tonumber(f[1])
  local ceiling = ceiling_of(e)
  e.ceiling = ceiling
  e.calm = f[6] == '1'
  local limit = tonumber(f[2])
  if limit == nil and f[7] ~= '1' then limit = ceiling end
  if limit ~= nil and ceiling ~= nil and limit > ceiling then limit = ceiling end
  if limit ~= nil and ceiling ~= nil and limit < ceiling and not e.calm then limit = ceiling end
  e.limit = limit
  e.next_paced = num(f[3], -INF)
  e.last_429 = num(f[4], -INF)
  e.next_recovery = num(f[5], INF)
  redis.call('ZREMRANGEBYSCORE', lkey, '-inf', now - e.window)
  local flat = redis.call('ZRANGE', lkey, 0, -1, 'WITHSCORES')
  local scores = {}
  for i = 2, #flat, 2 do scores[#scores + 1] = tonumber(flat[i]) end
  e.scores = scores
  recover(e, now)
  return e
end

local function save(e, ttl)
  if e.refuted then  -- nothing of its own to keep: the shared state stays as it is
    redis.call('PEXPIRE', e.h, ttl)
    return
  end
  if e.limit == nil or (e.ceiling ~= nil and e.limit >= e.ceiling) then
    redis.call('HDEL', e.h, 'limit', 'learnt')
  else
    redis.call('HSET', e.h, 'limit', e.limit, 'learnt', '1')
  end
  if e.calm then redis.call('HSET', e.h, 'calm', '1') else redis.call('HDEL', e.h, 'calm') end
  set_or_clear(e.h, 'next_paced', e.next_paced)
  set_or_clear(e.h, 'last_429', e.last_429)
  set_or_clear(e.h, 'next_recovery', e.next_recovery)
  redis.call('PEXPIRE', e.h, ttl)
  if #e.scores > 0 then redis.call('PEXPIRE', e.l, ttl) end
end

-- Earliest time >= t at which this entity's log and pacing allow a grant (no writes), with
-- `reserve` grants of the window kept for others, this grant paced at the share left (one
-- grant always left; EndpointRate.rate_ready).
local function ready(e, t, reserve)
  local limit = e.limit
  if limit == nil then return t end
  local scores, count = e.scores, #e.scores
  local setting = e.burst_setting
  if setting < 1 then setting = limit end  -- no configured rate: a bare log (as EndpointRate)
  local burst = math.min(setting, limit)
  if e.calm then burst = 1 end  -- recovering from a 429: each grant paced
  local paced = math.max(t, e.next_paced)
  if reserve ~= nil and reserve > 0 then
    limit = limit - math.min(reserve, limit - 1)
    burst = math.min(burst, limit)
    -- Paced at the share left, from the last grant (others first).
    if count > 0 then paced = math.max(paced, scores[count] + e.window / limit) end
  end
  if count >= limit then paced = math.max(paced, scores[count - limit + 1] + e.window) end
  if count < burst then return t end
  local unpaced = math.max(t, scores[count - burst + 1] + e.window)
  return math.min(paced, unpaced)
end

local function grant(e, member)
  if e.limit == nil then return end
  redis.call('ZADD', e.l, now, member)
  local scores = e.scores
  scores[#scores + 1] = now
  -- Spread the free slots evenly until the oldest grant leaves the window; a spread rule
  -- (burst 1) with no floor.
  local free = math.max(0, e.limit - #scores)
  local floor = e.window / e.limit
  if e.burst_setting == 1 then floor = 0 end
  e.next_paced = now + math.max(floor, (scores[1] + e.window - now) / (free + 1))
end

-- EndpointRate.rate_limited_at: below what the last window granted (a fifth; while calm a
-- fifth of the limit; one more per further 429 within window/12; not below ceiling/8), then
-- the window starts at the 429 (earlier grants no longer count), calm.
local function rate_limited(e)
  if e.refuted then return end
  local recent = now - e.last_429 < e.window / 12
  e.last_429 = now
  e.next_recovery = now + e.window / 4
  local floor = 1
  if e.ceiling ~= nil then floor = math.max(1, math.floor(e.ceiling / 8)) end
  local limit = e.limit
  if recent then
    if limit ~= nil and limit > floor then limit = limit - 1 end
  else
    local granted = math.floor(#e.scores * 0.8)
    if e.calm and limit ~= nil then granted = math.max(granted, math.floor(limit * 0.8)) end
    if limit == nil then
      if granted > 0 then limit = math.max(floor, granted) end
    else
      limit = math.max(1, math.min(limit - 1, math.max(floor, granted)))
    end
  end
  if limit == nil then return end
  e.limit = limit
  redis.call('DEL', e.l)
  e.scores = {}
  e.next_paced = -INF
  e.calm = true
end

-- EndpointRate.state_limit: a stated limit holds at once (lower, or higher unless calm).
local function state_limit(e, stated)
  if stated < 1 or stated == e.stated then return end
  redis.call('HSET', e.h, 'stated', stated)
  e.stated = stated
  e.ceiling = ceiling_of(e)
  if e.ceiling == nil then return end
  if e.limit == nil or e.ceiling < e.limit or not e.calm then e.limit = e.ceiling end
end

local function entities(first_key, first_arg)
  local list = {}
  for k = 0, 1 do
    local hkey = KEYS[first_key + 2 * k]
    if hkey ~= nil and hkey ~= '' then
      local a = first_arg + 3 * k
      local configured = tonumber(ARGV[a])
      if configured ~= nil then
        list[#list + 1] = load(hkey, KEYS[first_key + 2 * k + 1], configured,
                               tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]))
      end
    end
  end
  return list
end

local function pause(skey, field, total, until_t, reason)
  local current = num(redis.call('HGET', skey, field), -INF)
  if until_t <= current then return end
  redis.call('HINCRBY', skey, total, math.floor(until_t - math.max(current, now)))
  redis.call('HSET', skey, field, string.format('%.0f', until_t))
  if reason ~= nil then redis.call('HSET', skey, 'reason', reason) end
end

-- The failure window: once `threshold` failures lie in it, wait until the oldest leaves.
local function failure_pause(skey, fkey, threshold, window)
  redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now - window)
  local count = redis.call('ZCARD', fkey)
  if count >= threshold then
    local oldest = redis.call('ZRANGE', fkey, count - threshold, count - threshold,
                              'WITHSCORES')
    pause(skey, 'failure_paused_until', 'failure_paused_us', tonumber(oldest[2]) + window, nil)
  end
end

local function snapshot(skey, ehkey, list)
  local s = redis.call('HMGET', skey, 'paused_until', 'reason', 'failure_paused_until')
  local p = redis.call('HMGET', ehkey, 'paused_until', 'allowance', 'allowance_until')
  local allowance, allowance_until = tonumber(p[2]), tonumber(p[3])
  if allowance == nil or allowance_until == nil or allowance_until <= now then
    allowance, allowance_until = -1, nil
  end
  local reply = {now, rel(tonumber(s[1])), s[2] or '', rel(tonumber(s[3])),
                 rel(tonumber(p[1])), allowance, rel(allowance_until)}
  for _, e in ipairs(list) do
    local calm = 0
    if e.calm then calm = 1 end
    local row = {e.limit or 0, calm}
    if e.refuted then row = {-1, 0} end
    for _, score in ipairs(e.scores) do row[#row + 1] = math.floor(now - score) end
    reply[#reply + 1] = row
  end
  return reply
end

local function prepend(a, b, rest)
  local out = {a, b}
  for _, v in ipairs(rest) do out[#out + 1] = v end
  return out
end
"""

_PRELUDE = _CLOCK + _RULES

ACQUIRE = (
    _PRELUDE
    + r"""
local skey, ehkey = KEYS[1], KEYS[2]
local member, client, ttl, model = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local list = entities(2, 5)
local s = redis.call('HMGET', skey, 'paused_until', 'failure_paused_until')
local held = -INF
if model ~= '' then held = num(redis.call('HGET', skey, 'model:' .. model), -INF) end
local p = redis.call('HMGET', ehkey, 'paused_until', 'allowance', 'allowance_until')
local allowance, allowance_until = tonumber(p[2]), num(p[3], -INF)

-- The pool's grants kept for this process's queue calls waiting (polls only; 0: none).
local reserve = num(ARGV[11], 0)

local function overall(t)
  if allowance ~= nil and allowance_until > t and allowance <= 0 then
    t = math.max(t, allowance_until)
  end
  for _ = 1, 2 do  -- each rule only gets easier with time: two passes settle them all
    for i, e in ipairs(list) do
      if i == 2 then t = ready(e, t, reserve) else t = ready(e, t, 0) end
    end
  end
  return t
end

local t = overall(math.max(now, num(s[1], -INF), num(s[2], -INF), num(p[1], -INF), held))
local granted, wait = 0, t - now
if t <= now then
  granted = 1
  for _, e in ipairs(list) do grant(e, member) end
  if allowance ~= nil and allowance > 0 and allowance_until > now then
    allowance = allowance - 1
    redis.call('HSET', ehkey, 'allowance', allowance)
  end
  redis.call('HINCRBY', skey, 'granted', 1)
  redis.call('PEXPIRE', skey, ttl)
  wait = overall(now) - now
end
for _, e in ipairs(list) do save(e, ttl) end
if wait == INF then wait = -1 else wait = math.ceil(wait) end

-- Who else asks for this endpoint: a client counts while it asked within a few pacing
-- intervals. Competing clients add jitter to their retries, so none always wins.
local horizon = 0
for _, e in ipairs(list) do
  if e.limit ~= nil then horizon = math.max(horizon, math.min(e.window, 3 * e.window / e.limit)) end
end
local others = 0
if horizon > 0 then
  local ckey = ehkey .. ':clients'
  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now - horizon)
  redis.call('ZADD', ckey, now, client)
  redis.call('PEXPIRE', ckey, ttl)
  others = redis.call('ZCARD', ckey) - 1
end
local reply = prepend(granted, wait, snapshot(skey, ehkey, list))
table.insert(reply, 3, others)
return reply
"""
)

LEARN = (
    _PRELUDE
    + r"""
local skey, fkey, ehkey = KEYS[1], KEYS[2], KEYS[3]
local member, ttl = ARGV[1], tonumber(ARGV[2])
local list = entities(3, 3)
local is_429 = ARGV[9] == '1'
local pause_ms, reason = tonumber(ARGV[10]), ARGV[11]
local stated = tonumber(ARGV[12])
local allowance, allowance_ms = tonumber(ARGV[13]), tonumber(ARGV[14])
local endpoint_pause_ms = tonumber(ARGV[15])
local failure = ARGV[16] == '1'
local threshold, failure_window = tonumber(ARGV[17]), tonumber(ARGV[18]) * 1000
local model, model_pause_ms = ARGV[19], tonumber(ARGV[20])
local endpoint = ARGV[21]

if is_429 then
  redis.call('HINCRBY', skey, 'rate_limited', 1)
  for _, e in ipairs(list) do rate_limited(e) end
end
if model ~= '' and model_pause_ms >= 0 then
  -- An overloaded model: its queue calls wait (ACQUIRE with that model), nothing else.
  local key, until_t = 'model:' .. model, now + model_pause_ms * 1000
  if until_t > num(redis.call('HGET', skey, key), -INF) then
    redis.call('HSET', skey, key, string.format('%.0f', until_t))
  end
end
if pause_ms >= 0 then
  pause(skey, 'paused_until', 'paused_us', now + pause_ms * 1000, reason)
end
local own = list[1]  -- the endpoint's own entity comes first (configured 0: no limit)
if stated > 0 then state_limit(own, stated) end
-- EndpointRate.state_pool_limit: an assumed pool rises to a limit one of its endpoints
-- states, never falls; one listed by the key or given by the user stays. Two of its
-- endpoints stating different figures refute it (one pooled window would state one figure):
-- flagged for every process, for good.
local pool = list[2]
local refuted_by, refuted_figure = '', 0
if stated > 0 and pool ~= nil and not pool.explicit and not pool.refuted then
  redis.call('HSET', pool.h, 'stated:' .. endpoint, stated)
  local fields = redis.call('HGETALL', pool.h)
  for j = 1, #fields, 2 do
    local other = string.match(fields[j], '^stated:(.+)$')
    local figure = tonumber(fields[j + 1])
    if other ~= nil and other ~= endpoint and figure ~= stated then
      refuted_by, refuted_figure = other, figure
      break
    end
  end
  if refuted_by ~= '' then
    redis.call('HSET', pool.h, 'refuted', '1')
    pool.refuted, pool.limit, pool.ceiling, pool.calm, pool.scores = true, nil, nil, false, {}
  elseif pool.ceiling == nil or stated > pool.ceiling then
    state_limit(pool, stated)
  end
end
if allowance >= 0 then
  redis.call('HSET', ehkey, 'allowance', allowance,
             'allowance_until', string.format('%.0f', now + allowance_ms * 1000))
end
if endpoint_pause_ms >= 0 then
  pause(ehkey, 'paused_until', 'paused_us', now + endpoint_pause_ms * 1000, nil)
end
if failure then
  redis.call('HINCRBY', skey, 'failures', 1)
  redis.call('ZADD', fkey, now, member)
  failure_pause(skey, fkey, threshold, failure_window)
  redis.call('PEXPIRE', fkey, ttl)
end
for _, e in ipairs(list) do save(e, ttl) end
redis.call('PEXPIRE', skey, ttl)
redis.call('PEXPIRE', ehkey, ttl)
return prepend(refuted_by, refuted_figure, snapshot(skey, ehkey, list))
"""
)

BACKFILL = (
    _PRELUDE
    + r"""
local skey, fkey = KEYS[1], KEYS[2]
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local pause_ms, reason = tonumber(ARGV[3]), ARGV[4]
local threshold, failure_window = tonumber(ARGV[5]), tonumber(ARGV[6]) * 1000
local a = 7
local n = tonumber(ARGV[a])
for i = 1, n do
  redis.call('ZADD', fkey, now - tonumber(ARGV[a + i]), prefix .. ':f' .. i)
end
if n > 0 then
  redis.call('HINCRBY', skey, 'failures', n)
  failure_pause(skey, fkey, threshold, failure_window)
  redis.call('PEXPIRE', fkey, ttl)
end
a = a + n + 1
local added = 0
for k = 3, #KEYS do
  local count = tonumber(ARGV[a])
  for i = 1, count do
    redis.call('ZADD', KEYS[k], now - tonumber(ARGV[a + i]), prefix .. ':g' .. i)
  end
  if count > 0 then redis.call('PEXPIRE', KEYS[k], ttl) end
  added = added + count
  a = a + count + 1
end
if pause_ms >= 0 then
  pause(skey, 'paused_until', 'paused_us', now + pause_ms * 1000, reason)
end
redis.call('PEXPIRE', skey, ttl)
return {now, added, n}
"""
)

RELEASE = r"""
local removed = 0
for _, key in ipairs(KEYS) do removed = removed + redis.call('ZREM', key, ARGV[1]) end
return removed
"""

RULE_STEP = (
    _TOLD_CLOCK
    + _RULES
    + r"""
local e = load(KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
local step, value, granted = ARGV[5], tonumber(ARGV[6]), 0
if step == 'grant' then
  if ready(e, now, value) <= now then
    grant(e, ARGV[7])
    granted = 1
  end
elseif step == '429' then
  rate_limited(e)
elseif step == 'state' then
  state_limit(e, value)
end
save(e, 3600000)
local wait = ready(e, now, 0) - now
if wait == INF then wait = -1 else wait = math.ceil(wait) end
local calm = 0
if e.calm then calm = 1 end
return {granted, wait, e.limit or 0, calm}
"""
)

#: One figure for every process: each publishes its demand and reads the sum of the others'.
DEMAND = (
    _CLOCK
    + r"""
local key, client = KEYS[1], ARGV[1]
local ttl, stale, n = tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000, tonumber(ARGV[4])
local own = {string.format('%d', now)}
local sums = {}
for i = 1, n do
  own[i + 1] = ARGV[4 + i]
  sums[i] = 0
end
redis.call('HSET', key, client, table.concat(own, ','))
redis.call('PEXPIRE', key, ttl)
local others = 0
local all = redis.call('HGETALL', key)
for j = 1, #all, 2 do
  if all[j] ~= client then
    local fields = {}
    for field in string.gmatch(all[j + 1], '[^,]+') do fields[#fields + 1] = tonumber(field) end
    if fields[1] == nil or fields[1] < now - stale then
      redis.call('HDEL', key, all[j])
    elseif #fields == n + 1 then
      others = others + 1
      for i = 1, n do sums[i] = sums[i] + (fields[i + 1] or 0) end
    end
  end
end
local reply = {others}
for i = 1, n do reply[i + 1] = tostring(sums[i]) end
for k = 2, #KEYS do
  local since = now - tonumber(ARGV[4 + n + k - 1]) * 1000
  local flat = redis.call('ZRANGEBYSCORE', KEYS[k], '(' .. string.format('%.0f', since), '+inf',
                          'WITHSCORES')
  local row = {}
  for i = 2, #flat, 2 do row[#row + 1] = math.floor(now - tonumber(flat[i])) end
  reply[#reply + 1] = row
end
return reply
"""
)

#: The run times RUNS keeps (the last ones: a model's fit reads at most as many).
RUNS_KEPT = 256

RUNS = r"""
local key, seq = KEYS[1], KEYS[2]
local client, ttl = ARGV[1], tonumber(ARGV[2])
local cursor, n = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, n - 1 do
  local id = redis.call('INCR', seq)
  redis.call('RPUSH', key, cjson.encode({id, client, ARGV[5 + 3 * i], ARGV[6 + 3 * i],
                                         ARGV[7 + 3 * i]}))
end
if n > 0 then
  redis.call('LTRIM', key, -KEPT, -1)
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', seq, ttl)
end
local last = tonumber(redis.call('GET', seq) or '0')
local reply = {last}
if cursor < last then
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local entry = cjson.decode(raw)
    if entry[1] > cursor and entry[2] ~= client then
      reply[#reply + 1] = entry[3]
      reply[#reply + 1] = entry[4]
      reply[#reply + 1] = entry[5]
    end
  end
end
return reply
""".replace("KEPT", str(RUNS_KEPT))
