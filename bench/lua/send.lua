-- POST a message into a random room of the list (one room: the hot-room scenario).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua"
local common = require("common")
local rooms
local body = '{"body": "benchmark message with a little text in it"}'

function init(args)
  rooms = common.read_lines(args[1])
  math.randomseed(os.time() + math.random(1000))
end

function request()
  local room = rooms[math.random(#rooms)]
  return wrk.format("POST", "/v1/rooms/" .. room .. "/messages",
    {["Content-Type"] = "application/json", ["Authorization"] = wrk.headers["Authorization"]}, body)
end

done = common.summary
