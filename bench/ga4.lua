-- wrk script: sends the request in a raw HTTP file (default bench/ga4.http, or the first script
-- argument: wrk ... -s bench/ga4.lua -- FILE) on every connection, and prints one
-- machine-readable summary line (WRKJSON {...}) at the end. The same file feeds bench-load, so
-- both phases send byte-identical requests. Latencies are in microseconds.

local function read_request(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  local head, body = text:match("^(.-)\n\n(.*)$")
  if not head then head, body = text, "" end
  body = body:gsub("\n$", "")
  local method, target = head:match("^(%S+)%s+(%S+)")
  local headers = {}
  for line in head:gmatch("\n([^\n]+)") do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name] = value end
  end
  return method, target, headers, body
end

local file = "bench/ga4.http"

function init(args)
  if args[1] then file = args[1] end
  wrk.method, wrk.path, wrk.headers, wrk.body = read_request(file)
  req = wrk.format()
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"non_2xx_3xx":%d,"timeouts":%d,"p50":%d,"p90":%d,"p99":%d,' ..
    '"p999":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
