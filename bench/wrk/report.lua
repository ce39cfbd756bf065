-- Appended to every wrk script by bench/wrk.py: one machine-readable line at the end.
done = function(summary, latency, requests)
  local e = summary.errors
  local sent, answered, accepted = -1, -1, -1
  if counts then sent, answered, accepted = counts() end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"sent":%d,"answered":%d,"accepted":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, sent, answered, accepted))
end
