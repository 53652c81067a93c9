-- wrk script: POST /v1/feedback with labelled examples ({"features": [16 floats],
-- "label": 0..3}) as fast as the connections allow. Used by
-- scripts/cluster_figures.py (figure 1) to fill a replica's WAL while Redis is away.
--
--   wrk -t2 -c32 -d25s -s scripts/wrk_feedback.lua http://127.0.0.1:8080/v1/feedback
--
-- Each thread draws 1024 bodies once in init() (four classes around the default
-- model's feature scales, the same row load_test.sh uses) and cycles through them,
-- so wrk spends its time sending, not formatting. done() prints one line:
-- RESULT requests seconds non2xx connect read write timeout p50_us p99_us

local base = {0.7, -1200.5, 0.0031, 45.2, 880000.0, -0.02, 3.3, 0.9, 12.0, -0.4,
              7000.0, 0.11, -2.5, 0.0009, 61.0, -330000.0}
local bodies = {}
local n = 0
local counter = 0

local function gauss()
  local u1, u2 = math.random(), math.random()
  if u1 < 1e-12 then u1 = 1e-12 end
  return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
end

function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0))
  for i = 1, 1024 do
    local label = (i - 1) % 4
    local x = {}
    for j = 1, 16 do
      -- class k shifts every feature by a class-dependent half scale
      local shift = 0.5 * (((j + label) % 4) - 1.5)
      x[j] = string.format("%.6g", base[j] * (1 + shift + 0.3 * gauss()))
    end
    bodies[i] = '{"features":[' .. table.concat(x, ",") .. '],"label":' .. label .. '}'
  end
end

wrk.method = "POST"
wrk.headers["content-type"] = "application/json"

function request()
  n = n % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[n])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.3f %d %d %d %d %d %.0f %.0f\n",
    summary.requests, summary.duration / 1e6, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
