-- wrk script: 100-event POST /events batches to the site named by BENCH_SITE (each
-- measurement its own, for the exactly-once check; default "bench").
local site = os.getenv("BENCH_SITE") or "bench"
local counter = 0
local parts = {}
request = function()
  counter = counter + 1
  for i = 1, 100 do
    parts[i] = string.format('{"page_id":"/bench/%d","user_id":"u%d","site_id":"%s"}',
                             (counter + i) % 100, (counter * 100 + i) % 5000, site)
  end
  return wrk.format("POST", "/events", {["Content-Type"] = "application/json"},
                    "[" .. table.concat(parts, ",") .. "]")
end
