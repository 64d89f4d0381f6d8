-- wrk hooks: optional method/body/headers from the environment, and a JSON summary line.
local method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
local token = os.getenv("BENCH_TOKEN")
-- Milliseconds each connection waits before its next request: a load below capacity, where
-- latency is the proxy's own and not the queue of a saturated machine.
local pace = tonumber(os.getenv("BENCH_PACE_MS") or "")

request = function()
  local headers = {}
  if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if body and body ~= "" then headers["Content-Type"] = "application/json" end
  return wrk.format(method or "GET", nil, headers, body)
end

if pace and pace > 0 then
  delay = function() return pace end
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
