-- wrk script: 100-event POST /events batches (site "bench").
local counter = 0
local parts = {}
request = function()
  counter = counter + 1
  for i = 1, 100 do
    parts[i] = string.format('{"page_id":"/bench/%d","user_id":"u%d","site_id":"bench"}',
                             (counter + i) % 100, (counter * 100 + i) % 5000)
  end
  return wrk.format("POST", "/events", {["Content-Type"] = "application/json"},
                    "[" .. table.concat(parts, ",") .. "]")
end
