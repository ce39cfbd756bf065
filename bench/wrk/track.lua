-- wrk script: single-event POST /track with a fresh user per request (site "bench").
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"page_id":"/bench/%d","user_id":"u%d","site_id":"bench"}',
                             counter % 100, counter % 5000)
  return wrk.format("POST", "/track", {["Content-Type"] = "application/json"}, body)
end
