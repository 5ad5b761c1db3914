"""The server side of the ``redis://`` transport: one Lua script holding every atomic broker operation.

Loaded once per connection (``SCRIPT LOAD``) and called as ``EVALSHA sha 1 "{prefix}:" <op> <args...>``,
or, on Redis 7, loaded as the function library :data:`LIBRARY` (built from the same source) and called as
``FCALL <FUNCTION> 1 "{prefix}:" <op> <args...>``, which does not rerun the script's body at every call;
the comments in :data:`SOURCE` describe the key layout and each operation. Routing here mirrors
:mod:`kelp.routing` exactly (tests compare the two with hypothesis); dead-lettering is split: the script
moves a dead letter to the prefix's outbox stream atomically, and the client rewrites its headers with
:func:`kelp._broker.queue_args.dead_letter` and routes it (removing it from the outbox in the same script
call), so the ``x-death`` rules exist once, in Python.
"""

from __future__ import annotations

import hashlib

from kelp._broker.redis import (
    lua_base,
    lua_delayed,
    lua_delivery,
    lua_entries,
    lua_inspect,
    lua_ops,
    lua_queues,
    lua_routing,
)

__all__ = ["FUNCTION", "LIBRARY", "SHA", "SOURCE"]

#: Where every operation is dispatched from (the last part of the script).
DISPATCH = r"""local handler = ops[ARGV[1]]
if not handler then return redis.error_reply('KELP:VALUE:unknown operation ' .. tostring(ARGV[1])) end
local args = {}
for i = 2, #ARGV do args[i - 1] = ARGV[i] end
local ok, result = pcall(handler, args)
if ok then return result end
if type(result) == 'table' and result.kelp then return redis.error_reply('KELP:' .. result.kelp) end
error(result)
"""

#: The script: its parts in the order Lua needs them (a local function is defined before its callers).
SOURCE = "".join(
    (
        lua_base.LUA,
        lua_routing.LUA,
        lua_queues.LUA,
        lua_entries.LUA,
        lua_delayed.LUA,
        lua_delivery.LUA,
        lua_ops.LUA,
        lua_inspect.LUA,
        lua_delayed.OPS,
        DISPATCH,
    )
)

#: The script's SHA1, as EVALSHA names it.
SHA = hashlib.sha1(SOURCE.encode()).hexdigest()


def _library(source: str, name: str) -> str:
    """The script as a Redis 7 function library: its body (every local function, the ops table) runs once,
    at ``FUNCTION LOAD``, instead of at every call as with EVALSHA; each ``FCALL`` only sets the per-call
    values (the prefix, its key names, the time) and dispatches."""
    per_call = {
        "local P = KEYS[1]\n": "local P\n",
        "local NOW = now_ms()\n": "local NOW\n",
        # Loading a library may not read globals: unpack is looked up at the first call.
        "local unpack = unpack or table.unpack\n": "local unpack\n",
        "local K_ALIVE, K_TIMED, K_OUTBOX = P .. 'alive', P .. 'timed', P .. 'outbox'\n": (
            "local K_ALIVE, K_TIMED, K_OUTBOX\n"
        ),
        "local K_QUEUES, K_EXCHANGES, K_REFUSING = P .. 'queues', P .. 'exchanges', P .. 'refusing'\n": (
            "local K_QUEUES, K_EXCHANGES, K_REFUSING\n"
        ),
    }
    for old, new in per_call.items():
        if old not in source:
            raise AssertionError(f"the redis script changed: cannot build its function library ({old!r})")
        source = source.replace(old, new, 1)
    dispatch = source.index("local handler = ops[ARGV[1]]")
    return (
        f"#!lua name={name}\n"
        + source[:dispatch]
        + f"redis.register_function('{name}', function(KEYS, ARGV)\n"
        "unpack = unpack or rawget(_G, 'unpack') or table.unpack\n"
        "P = KEYS[1]\n"
        "NOW = now_ms()\n"
        "K_ALIVE, K_TIMED, K_OUTBOX = P .. 'alive', P .. 'timed', P .. 'outbox'\n"
        "K_QUEUES, K_EXCHANGES, K_REFUSING = P .. 'queues', P .. 'exchanges', P .. 'refusing'\n"
        + source[dispatch:]
        + "end)\n"
    )


#: The name of the script's function (FCALL) in Redis >= 7: versioned, so kelps of different versions
#: sharing a server each call their own.
FUNCTION = f"kelp_{SHA[:16]}"
#: The function library (``FUNCTION LOAD``) holding :data:`FUNCTION`.
LIBRARY = _library(SOURCE, FUNCTION)
