-- wrk script: the same single-event body as track.lua, to a trivial handler (the limit).
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"page_id":"/bench/%d","user_id":"u%d","site_id":"bench"}',
                             counter % 100, counter % 5000)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
