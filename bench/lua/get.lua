-- GET one of the paths in the file, round robin (history pages, the trivial floor).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua"
local common = require("common")
local paths
local i = 0

function init(args)
  paths = common.read_lines(args[1])
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

done = common.summary
