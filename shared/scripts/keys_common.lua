#!lua
-- keys_common: the one way a script names a key it was not given in KEYS (included).
-- A key a script chooses at run time (a flow's lease, a tenant's queue) belongs to a key family
-- of shared/keys.py: the caller passes the family key (e.g. `co:{adm}:lease:`) in KEYS and the
-- script appends the id. The built key starts with the family key, hash tag included, so it
-- lives in the slot of a declared key, and its name is spelled in shared/keys.py only.
-- family_key(family, id) -> the key `family .. id` (family: a KEYS entry)

local function family_key(family, id)
  return family .. id
end
