-- Alertmanager v4 webhook bodies for wrk, new alerts in every request.
--
--   wrk -s bench/wrk/alertmanager.lua <url> -- <alerts> <token> <run> [same]
--
-- The receiver derives event ids from an alert's fingerprint and startsAt and remembers each
-- group's alerts, so a body sent twice is stored once. To measure storing, every request is
-- a new group (groupKey) whose alerts' fingerprints are built from the run, the thread, the
-- request and the alert's index. With "same", each thread repeats one body, which measures
-- the duplicate path instead. done() prints one line, "wrk-json {...}": counts, latency
-- percentiles (microseconds), and how many answers were not a 2xx.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- One alert as Alertmanager 0.25 sends it. Alerts are grouped by alertname, cluster and
-- service; each request is a new group (a new cluster) of one of SERVICES services.
local SERVICES = 50
local ALERT = '{"status":"firing","labels":{"alertname":"HighLatency","cluster":"%s",'
  .. '"instance":"%s","job":"api","service":"%s","severity":"critical"},'
  .. '"annotations":{"summary":"p99 latency over 2s on %s",'
  .. '"runbook_url":"https://runbooks.example.com/HighLatency"},'
  .. '"startsAt":"2026-11-24T13:08:45.828123456+01:00","endsAt":"0001-01-01T00:00:00Z",'
  .. '"generatorURL":"http://prometheus:9090/graph?g0.expr=histogram_quantile%%280.99%%29",'
  .. '"fingerprint":"%s"}'
local HEAD = '{"receiver":"vigil","status":"firing","alerts":['
local TAIL = '],"groupLabels":{"alertname":"HighLatency","cluster":"%s","service":"%s"},'
  .. '"commonLabels":{"alertname":"HighLatency","cluster":"%s","job":"api","service":"%s",'
  .. '"severity":"critical"},"commonAnnotations":{},"externalURL":"http://alertmanager:9093",'
  .. '"version":"4","groupKey":"{}:{alertname=\\"HighLatency\\",cluster=\\"%s\\",'
  .. 'service=\\"%s\\"}","truncatedAlerts":0}'

function init(args)
  alerts = tonumber(args[1]) or 1
  run = tonumber(args[3]) or 0
  same = args[4] == "same"
  wrk.method = "POST"
  wrk.path = "/webhooks/alertmanager"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (args[2] or "")
  sent, ok, other, first_other = 0, 0, 0, ""
  if same then fixed = build(0) end
end

function build(n)
  local cluster = string.format("c%x-%d-%d", run, tid, n)
  local service = "svc-" .. (n * 7 + tid) % SERVICES
  local parts = {}
  for i = 1, alerts do
    -- 16 hex digits like Alertmanager's: run (16 bits), thread (8), request (28), index (12).
    local fp = string.format("%04x%02x%07x%03x", run % 65536, tid, n, i)
    local instance = string.format("10.%d.%d.%d:9100", tid, n % 256, i % 256)
    parts[i] = string.format(ALERT, cluster, instance, service, instance, fp)
  end
  return HEAD .. table.concat(parts, ",")
    .. string.format(TAIL, cluster, service, cluster, service, cluster, service)
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, fixed or build(sent))
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    other = other + 1
    if first_other == "" then first_other = status .. " " .. string.sub(body or "", 1, 200) end
  end
end

local function quote(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
  local ok_total, other_total, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
    if first == "" then first = thread:get("first_other") end
  end
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"duration_us":%d,"requests":%d,"bytes":%d,"ok":%d,"not_2xx":%d,'
      .. '"first_not_2xx":%s,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,'
      .. '"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,'
      .. '"mean":%.1f}}\n',
    summary.duration, summary.requests, summary.bytes, ok_total, other_total, quote(first),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
