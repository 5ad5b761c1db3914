"""The PostgreSQL schema of a ``postgresql://`` broker: its tables, its version, and a server restart.

Every broker lives in one schema (``kelp`` unless the URL says ``?schema=``). Its ``meta`` table records
the schema version; a schema written by a newer kelp, or a schema of that name that kelp did not write,
fails with a clear error before anything is touched; an older kelp's schema is upgraded in place. ``meta``
also records the server's start time: the first connection after a restart of PostgreSQL restarts the
broker as RabbitMQ would (non-durable queues and exchanges and transient messages are dropped; persistent
messages on durable queues stay, and the ones that were unacked come back flagged ``redelivered``).
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection, sql

from kelp.exceptions import VersionMismatch

__all__ = ["SCHEMA_VERSION", "ensure_schema", "lock_key"]

SCHEMA_VERSION = 2

# Messages: one row per routed copy. A claim sets owner (the claiming connection's id); an ack deletes
# the row. The ready index holds ready rows only, in delivery order (priority, then publish order).
_DDL = """
CREATE TABLE {s}.meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE {s}.exchanges (
    name text PRIMARY KEY, type text NOT NULL, durable bool NOT NULL, auto_delete bool NOT NULL,
    internal bool NOT NULL, arguments text NOT NULL
);
CREATE TABLE {s}.queues (
    name text PRIMARY KEY, durable bool NOT NULL, exclusive_owner bigint, auto_delete bool NOT NULL,
    arguments text NOT NULL, expires_ms bigint, had_consumer bool NOT NULL DEFAULT false,
    last_used float8 NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
CREATE TABLE {s}.bindings (
    source text NOT NULL, kind text NOT NULL, destination text NOT NULL, routing_key text NOT NULL,
    arguments text NOT NULL, PRIMARY KEY (source, kind, destination, routing_key, arguments)
);
CREATE TABLE {s}.messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, queue text NOT NULL, priority int NOT NULL,
    body bytea NOT NULL, properties text NOT NULL, headers text NOT NULL, exchange text NOT NULL,
    routing_key text NOT NULL, redelivered bool NOT NULL DEFAULT false, expires_at float8,
    persistent bool NOT NULL, size int NOT NULL, owner bigint
);
CREATE INDEX messages_ready ON {s}.messages (queue, priority DESC, id) WHERE owner IS NULL;
CREATE INDEX messages_owner ON {s}.messages (owner) WHERE owner IS NOT NULL;
CREATE INDEX messages_expiry ON {s}.messages (expires_at) WHERE expires_at IS NOT NULL;
{delayed}
CREATE TABLE {s}.connections (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, pid int NOT NULL, started timestamptz NOT NULL
);
CREATE TABLE {s}.consumers (
    connection bigint NOT NULL, channel int NOT NULL, tag text NOT NULL, queue text NOT NULL,
    PRIMARY KEY (connection, channel, tag)
);
CREATE INDEX consumers_queue ON {s}.consumers (queue);
INSERT INTO {s}.exchanges VALUES ('amq.direct', 'direct', true, false, false, '{{}}'),
    ('amq.fanout', 'fanout', true, false, false, '{{}}'), ('amq.topic', 'topic', true, false, false, '{{}}'),
    ('amq.headers', 'headers', true, false, false, '{{}}'),
    ('amq.match', 'headers', true, false, false, '{{}}');
"""

# Version 2. Delayed messages: one row per routed copy, held until its due time (the publisher's wall
# clock, seconds since the epoch), then moved into messages (see _delayed). Traffic counters: one row per
# queue that has had traffic, added to by each process in batches (see _counters).
_VERSION_2 = """
CREATE TABLE {s}.delayed (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, due float8 NOT NULL, queue text NOT NULL,
    message_id text NOT NULL, body bytea NOT NULL, properties text NOT NULL, headers text NOT NULL,
    exchange text NOT NULL, routing_key text NOT NULL, ttl_ms bigint, persistent bool NOT NULL
);
CREATE INDEX delayed_due ON {s}.delayed (due, id);
CREATE INDEX delayed_queue ON {s}.delayed (queue);
CREATE INDEX delayed_message ON {s}.delayed (message_id);
CREATE TABLE {s}.counters (
    queue text PRIMARY KEY, published bigint NOT NULL, delivered bigint NOT NULL, acked bigint NOT NULL
);
"""
_DDL = _DDL.replace("{delayed}", _VERSION_2)
#: What upgrades a schema of each older version to the next one.
_MIGRATIONS = {1: _VERSION_2}

# A server restart: what RabbitMQ's restart keeps, kept; everything of the old server's sessions let go.
_RESTART = """
DELETE FROM {s}.connections;
DELETE FROM {s}.consumers;
DELETE FROM {s}.queues WHERE NOT durable OR exclusive_owner IS NOT NULL;
DELETE FROM {s}.exchanges WHERE NOT durable;
DELETE FROM {s}.bindings b WHERE NOT EXISTS (SELECT 1 FROM {s}.exchanges e WHERE e.name = b.source)
    OR (b.kind = 'queue' AND NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = b.destination))
    OR (b.kind = 'exchange' AND NOT EXISTS (SELECT 1 FROM {s}.exchanges e WHERE e.name = b.destination));
DELETE FROM {s}.messages m WHERE NOT persistent
    OR NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = m.queue);
DELETE FROM {s}.delayed d WHERE NOT persistent
    OR NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = d.queue);
DELETE FROM {s}.counters c WHERE NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = c.queue);
UPDATE {s}.messages SET owner = NULL, redelivered = true WHERE owner IS NOT NULL;
UPDATE {s}.meta SET value = value + 1 WHERE key = 'topology';
"""


def lock_key(schema: str) -> int:
    """The advisory lock that orders topology changes after the publishes that routed on the old one."""
    return int.from_bytes(schema.encode()[:8].ljust(8, b"\0"), "big", signed=True) ^ 0x6B656C70


def _one(conn: Connection[Any], query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def ensure_schema(conn: Connection[Any], schema: str) -> None:
    """Create the broker's schema if missing, check its version, and restart the broker if the server was
    restarted since it last ran. Raises VersionMismatch for a schema kelp cannot use."""
    s = sql.Identifier(schema)
    meta = f"{schema}.meta"
    with conn.transaction():
        # One connection at a time sets a schema up (creating it, or restarting the broker).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        if _one(conn, sql.SQL("SELECT to_regclass(%s)"), (meta,)) is None:
            if _one(conn, sql.SQL("SELECT count(*) FROM pg_tables WHERE schemaname = %s"), (schema,)):
                raise VersionMismatch(
                    f"schema {schema!r} holds tables that kelp did not write: choose another ?schema="
                )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
            conn.execute(sql.SQL(_DDL).format(s=s))
            conn.execute(
                sql.SQL("INSERT INTO {}.meta VALUES ('version', %s), ('topology', 1), ('started', 0)").format(
                    s
                ),
                (SCHEMA_VERSION,),
            )
        version = _one(conn, sql.SQL("SELECT value FROM {}.meta WHERE key = 'version'").format(s))
        while version in _MIGRATIONS:  # an older kelp's schema: upgraded in place, one version at a time
            conn.execute(sql.SQL(_MIGRATIONS[version]).format(s=s))
            version += 1
            conn.execute(sql.SQL("UPDATE {}.meta SET value = %s WHERE key = 'version'").format(s), (version,))
        if version != SCHEMA_VERSION:
            raise VersionMismatch(
                f"the kelp schema {schema!r} has version {version}; this kelp reads version "
                f"{SCHEMA_VERSION} (and upgrades versions {sorted(_MIGRATIONS)}): a newer kelp wrote it, or "
                "something else did; upgrade kelp, or use another ?schema="
            )
        started = "(extract(epoch FROM pg_postmaster_start_time()) * 1000)::bigint"
        restarted = _one(
            conn,
            sql.SQL(f"SELECT value <> {started} FROM {{}}.meta WHERE key = 'started'").format(s),
        )
        if restarted:
            conn.execute(sql.SQL(_RESTART).format(s=s))
            conn.execute(sql.SQL(f"UPDATE {{}}.meta SET value = {started} WHERE key = 'started'").format(s))
