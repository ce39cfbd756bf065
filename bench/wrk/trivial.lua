-- wrk script: the same single-event body as track.lua, to a trivial handler (the limit).
local site = os.getenv("BENCH_SITE") or "bench"
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"page_id":"/bench/%d","user_id":"u%d","site_id":"%s"}',
                             counter % 100, counter % 5000, site)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
