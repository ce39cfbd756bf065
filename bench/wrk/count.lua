-- Appended by bench/wrk.py (count=True) before report.lua: counts, per wrk thread, the
-- requests sent, the answers and the 202s, so a run knows exactly which events were
-- acknowledged (for the exactly-once check) and how many were left unanswered at the end.
local threads = {}
setup = function(thread) table.insert(threads, thread) end
local inner_request = request
sent, answered, accepted = 0, 0, 0
request = function()
  sent = sent + 1
  return inner_request()
end
response = function(status, headers, body)
  answered = answered + 1
  if status == 202 then accepted = accepted + 1 end
end
counts = function()
  local s, a, c = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent"); a = a + t:get("answered"); c = c + t:get("accepted")
  end
  -- wrk calls request() once more on the first thread before the run, to check the
  -- request it makes (script_verify_request): that one is never sent.
  return math.max(a, s - 1), a, c
end
