-- wrk script for scripts/request_path.py: one route per run, chosen by the
-- environment variable RP_ROUTE ("infer" = POST /v1/infer with one fixed row of the
-- default model's 16 features, the row load_test.sh uses; anything else = the bare
-- GET of the URL given, e.g. /health/live). done() prints one line:
-- RESULT req_per_s p50_us p99_us non2xx socket_errors requests
--
--   RP_ROUTE=infer wrk -t2 -c64 -d10s --latency -s scripts/wrk_request_path.lua \
--     http://127.0.0.1:8080/v1/infer

if os.getenv("RP_ROUTE") == "infer" then
  wrk.method = "POST"
  wrk.headers["content-type"] = "application/json"
  wrk.body = '{"inputs": [[0.7,-1200.5,0.0031,45.2,880000.0,-0.02,3.3,0.9,12.0,-0.4,'
    .. '7000.0,0.11,-2.5,0.0009,61.0,-330000.0]]}'
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.0f %.0f %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end
