-- wrk hooks: optional method/body/headers from the environment, and a JSON summary line.
local method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
local token = os.getenv("BENCH_TOKEN")
-- Milliseconds each connection waits before its next request: a load below capacity, where
-- latency is the proxy's own and not the queue of a saturated machine.
local pace = tonumber(os.getenv("BENCH_PACE_MS") or "")

-- Set once, at load: wrk then builds the request a single time and sends the same bytes on
-- every request. A `request` function instead is a Lua call and a newly formatted string for
-- each request, which made wrk the costliest process on the machine (it shares the cores
-- with what it measures).
if method and method ~= "" then wrk.method = method end
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end

-- Each wait is drawn from an exponential distribution of that mean: arrivals then come as
-- independent clients' would. A fixed wait keeps the connections in step, so requests
-- arrive in bursts of all connections at once and p99 measures how fast a burst drains.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end

function init(args)
  -- `seed` is the global setup() set in this thread's state.
  math.randomseed(os.time() * 1000 + (seed or 0))
end

if pace and pace > 0 then
  delay = function()
    -- 1 - random() is in (0, 1]: the log is finite. wrk takes whole milliseconds.
    return math.floor(-pace * math.log(1 - math.random()) + 0.5)
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
