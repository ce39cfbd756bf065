-- wrk script: single-event POST /track with a fresh user per request, to the site named by
-- BENCH_SITE (each measurement its own, for the exactly-once check; default "bench").
local site = os.getenv("BENCH_SITE") or "bench"
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"page_id":"/bench/%d","user_id":"u%d","site_id":"%s"}',
                             counter % 100, counter % 5000, site)
  return wrk.format("POST", "/track", {["Content-Type"] = "application/json"}, body)
end
