-- versions: config changes are ordered by their stream entry id ("<ms>-<seq>"). Prepended to
-- the apply scripts (apply.lua, apply_policy.lua, apply_document.lua) by core/scripts.py.

local function parse(ver)
  local ms, seq = string.match(ver, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- -1, 0 or 1 as version a is older than, the same as, or newer than b
local function compare(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then
    return am < bm and -1 or 1
  end
  if as ~= bs then
    return as < bs and -1 or 1
  end
  return 0
end
