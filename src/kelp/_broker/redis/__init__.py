"""What the ``redis://`` transport keeps beside its I/O: the Lua broker script, the entry codec, tickers.

The transport itself is ``kelp/aio/transport/redis.py`` (and its generated sync twin); this package holds the
parts that do not depend on the face: :mod:`.script` (the one server-side Lua script that routes, stores,
claims and settles), :mod:`.codec` (how envelopes, headers and bindings are written into Redis) and
:mod:`.ticker` (the heartbeat loop: an asyncio task or a daemon thread).
"""
