"""The SQLite file: opening it, its versioned schema, and who (which live process) has it open.

A kelp database is marked with ``PRAGMA application_id`` (``'kelp'``) and ``PRAGMA user_version`` (the
schema version), so a foreign SQLite file, a file written by a newer kelp, or a damaged file each fail
with a clear error before anything is touched.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from contextlib import suppress
from pathlib import Path

from kelp.exceptions import InconsistencyError, OperationalError, UsageError, VersionMismatch

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "TOMBSTONE_OWNER",
    "connect",
    "ensure_schema",
    "namespace",
    "process_start_time",
    "process_state",
]

APPLICATION_ID = 0x6B656C70  # "kelp"
SCHEMA_VERSION = 7
#: The page size of a database file kelp creates (see connect()).
PAGE_SIZE = 2048

# A message's id is its rowid: SQLite gives a new row the last id + 1 (no AUTOINCREMENT, whose counter
# would be one more page written by every commit). No id at or below the ready mark is ever given again:
# see _READY_COUNTS.
_MESSAGES_TABLE = """CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    properties TEXT NOT NULL,
    headers TEXT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    redelivered INTEGER NOT NULL DEFAULT 0,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    persistent INTEGER NOT NULL,
    owner INTEGER,
    claimed_at REAL
)"""
_MESSAGES_INDEXES = (
    "CREATE INDEX messages_ready ON messages (queue, priority DESC, id) WHERE owner IS NULL",
    "CREATE INDEX messages_owner ON messages (owner) WHERE owner IS NOT NULL",
    "CREATE INDEX messages_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL",
)

# Delayed messages (schema 5): routed at publish, one row per queue, held here until ``due`` (wall clock)
# and then moved into ``messages`` by the transaction that finds them due (_ops.promote), in due then
# publish (id) order; their TTL (``ttl_ms``) counts from then. Cancelled by ``message_id``. Two indexes
# only (each is one more page written by every publish's commit): by due time, covering the queue (so
# counting or deleting a queue's rows reads the index, not the bodies), and by message id for the ids
# a user gave; an id kelp generated (``kd-<due ms>-...``) is found through the due-time index.
_DELAYED = (
    """CREATE TABLE delayed (
    id INTEGER PRIMARY KEY,
    due REAL NOT NULL,
    queue TEXT NOT NULL,
    message_id TEXT,
    body BLOB NOT NULL,
    properties TEXT NOT NULL,
    headers TEXT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    ttl_ms INTEGER,
    persistent INTEGER NOT NULL
)""",
    "CREATE INDEX delayed_due ON delayed (due, id, queue)",
    "CREATE INDEX delayed_message ON delayed (message_id) WHERE message_id NOT GLOB 'kd-*'",
)

_DDL_TEMPLATE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('topology', 1);
CREATE TABLE exchanges (
    name TEXT PRIMARY KEY, type TEXT NOT NULL, durable INTEGER NOT NULL, auto_delete INTEGER NOT NULL,
    internal INTEGER NOT NULL, arguments TEXT NOT NULL
);
CREATE TABLE queues (
    name TEXT PRIMARY KEY, durable INTEGER NOT NULL, exclusive_owner INTEGER, auto_delete INTEGER NOT NULL,
    arguments TEXT NOT NULL, expires_ms INTEGER, had_consumer INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL
);
CREATE TABLE bindings (
    source TEXT NOT NULL, kind TEXT NOT NULL, destination TEXT NOT NULL, routing_key TEXT NOT NULL,
    arguments TEXT NOT NULL,
    PRIMARY KEY (source, kind, destination, routing_key, arguments)
) WITHOUT ROWID;
CREATE INDEX bindings_destination ON bindings (kind, destination);
{messages}CREATE TABLE processes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, start_time TEXT, namespace TEXT NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE connections (id INTEGER PRIMARY KEY AUTOINCREMENT, process INTEGER NOT NULL);
CREATE TABLE consumers (
    connection INTEGER NOT NULL, channel INTEGER NOT NULL, tag TEXT NOT NULL, queue TEXT NOT NULL,
    PRIMARY KEY (connection, channel, tag)
) WITHOUT ROWID;
CREATE INDEX consumers_queue ON consumers (queue);
"""
_DDL = _DDL_TEMPLATE.format(
    messages=";\n".join((_MESSAGES_TABLE.format(name="messages"), *_MESSAGES_INDEXES, ""))
)

# The ready messages of each queue, counted (with their bytes) so that get, queue_declare and length
# limits never count a queue: O(1) in its depth. A queue's row comes and goes with the queue.
#
# Inserts are counted in arrears, not per row: the rows above the *ready mark* (meta 'ready_mark', a
# message id) are not counted yet. Every write transaction folds them in first (_ops.fold_ready: the rows
# above the mark, read by id range, added to their queues' counts, the mark moved to the last id), and
# kelp's own transactions fold what they inserted before they commit. So the one-row INSERT of a
# persistent publish writes no counter, and rows written from outside kelp are counted by the next
# transaction all the same. The triggers count deletes and releases of rows at or below the mark (a row
# above it is not counted yet); a claim, which kelp alone makes, folds first and subtracts its whole batch
# in one statement (_deliveries.claim_rows).
#
# A row with the mark's id always exists: when that message is deleted, a *tombstone* takes its id (queue
# '', owner 0: never ready, in no queue) until the mark moves past it. So the last id never drops below
# the mark, every new row gets an id above it (counted by the next fold, never mistaken for a counted
# one), and an id at or below it - every claimed message's: claims fold first - is never given to another
# message: a late ack or reject of a message of a deleted queue cannot reach a new one.
_MARK = "(SELECT value FROM meta WHERE key='ready_mark')"
TOMBSTONE_OWNER = 0
_TOMBSTONE = (
    "INSERT INTO messages (id, queue, priority, body, properties, headers, exchange, routing_key, "
    f"persistent, owner) VALUES ({{id}}, '', 0, x'', '{{{{}}}}', '', '', '', 1, {TOMBSTONE_OWNER})"
)
_READY_COUNTS = (
    "CREATE TABLE queue_ready (queue TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TRIGGER ready_queue_added AFTER INSERT ON queues BEGIN "
    "INSERT OR REPLACE INTO queue_ready VALUES (NEW.name, 0, 0); END",
    "CREATE TRIGGER ready_queue_deleted AFTER DELETE ON queues BEGIN "
    "DELETE FROM queue_ready WHERE queue = OLD.name; END",
    "CREATE TRIGGER ready_delete AFTER DELETE ON messages "
    f"WHEN OLD.owner IS NULL AND OLD.id <= {_MARK} BEGIN "
    "UPDATE queue_ready SET count = count - 1, bytes = bytes - length(OLD.body) WHERE queue = OLD.queue; END",
    "CREATE TRIGGER ready_release AFTER UPDATE OF owner ON messages "
    f"WHEN OLD.owner IS NOT NULL AND NEW.owner IS NULL AND NEW.id <= {_MARK} BEGIN "
    "UPDATE queue_ready SET count = count + 1, bytes = bytes + length(NEW.body) WHERE queue = NEW.queue; END",
    f"CREATE TRIGGER mark_kept AFTER DELETE ON messages WHEN OLD.id = {_MARK} BEGIN "
    + _TOMBSTONE.format(id="OLD.id")
    + "; END",
)
# Traffic counters (schema 6), per queue, for the rates of ``kelp serve`` and Prometheus: ``published``
# (copies that entered the queue), ``delivered`` (claimed or taken by get) and ``acked``. None of them
# costs a write of its own: publishes are added by the fold that counts new rows (_ops.fold_ready), so
# a persistent publish stays one INSERT; deliveries by the statement that already subtracts a claimed
# batch from the ready count; acks by one UPDATE per queue per group-committed batch of acks.
_RATES = (
    "ALTER TABLE queue_ready ADD COLUMN published INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE queue_ready ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE queue_ready ADD COLUMN acked INTEGER NOT NULL DEFAULT 0",
    "DROP TRIGGER ready_queue_added",
    "CREATE TRIGGER ready_queue_added AFTER INSERT ON queues BEGIN "
    "INSERT OR REPLACE INTO queue_ready (queue, count, bytes) VALUES (NEW.name, 0, 0); END",
)
# Fresh rows (schema 7). A persistent publish's one-row INSERT (_ops.INSERT_IF_CURRENT) marks its row
# ``fresh``: it is ready (owner NULL, counted like any row above the ready mark) but not yet in the index of
# ready messages, so its commit writes one B-tree page (the table's last leaf), not two. Fresh rows are
# always above the ready mark, and the fold that every write transaction runs first (_ops.fold_ready)
# clears the mark of the rows it counts: a transaction that claims, gets, purges or inserts through the
# index finds every ready row in it, in order. A reader outside a write transaction that asks whether a
# queue has a ready message looks above the mark too (_state).
READY_INDEX = (
    "CREATE INDEX messages_ready ON messages (queue, priority DESC, id) WHERE owner IS NULL AND fresh IS NULL"
)
_FRESH = (
    "ALTER TABLE messages ADD COLUMN fresh INTEGER",
    "DROP INDEX messages_ready",
    READY_INDEX,
)
# Every row there is is counted (new file: none; upgrade: by schema 3's counts), and no id used before is
# given again (the last one AUTOINCREMENT gave, kept as a tombstone if its message is gone).
_MARK_START = (
    "INSERT OR REPLACE INTO meta VALUES ('ready_mark', max(coalesce((SELECT max(id) FROM messages), 0), "
    "coalesce((SELECT seq FROM sqlite_sequence WHERE name='messages'), 0)))"
)
_MARK_KEPT = (
    "INSERT INTO messages (id, queue, priority, body, properties, headers, exchange, routing_key, "
    f"persistent, owner) SELECT value, '', 0, x'', '{{}}', '', '', '', 1, {TOMBSTONE_OWNER} FROM meta "
    "WHERE key='ready_mark' AND value > 0 ON CONFLICT DO NOTHING"
)

# Created on opening when missing, without a schema version of their own (an older kelp reading the file
# ignores them):
# - what each topology version changed (see kelp._broker.sqlite._topology.refresh_topology): an entity
#   ('exchange', 'queue', 'binding' or '*' for anything) and its key. A kelp that does not write it leaves
#   gaps in it, and a gap makes a reader rebuild its snapshot from the tables;
# - the queues with x-expires by when they expire, so finding the due ones does not read every queue.
_ON_OPEN = (
    """CREATE TABLE IF NOT EXISTS topology_log (
    version INTEGER PRIMARY KEY, entity TEXT NOT NULL, name TEXT NOT NULL, kind TEXT, destination TEXT,
    routing_key TEXT, arguments TEXT
)""",
    "CREATE INDEX IF NOT EXISTS queues_expiry ON queues (last_used + expires_ms / 1000.0) "
    "WHERE expires_ms IS NOT NULL",
)

# Upgrades of an older kelp's file, run in the opening write transaction: version -> statements that
# bring the previous version to it.
_MIGRATIONS = {
    # The index of ready messages holds only ready ones: claiming a message deletes its entry instead of
    # moving it, and acking one leaves the index alone (a sixth less work per message consumed).
    2: (
        "DROP INDEX messages_claim",
        "CREATE INDEX messages_ready ON messages (queue, priority DESC, id) WHERE owner IS NULL",
    ),
    # Schema 3 counted each insert by a trigger (as it was then; schema 4 replaces it).
    3: (
        "CREATE TABLE queue_ready (queue TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL) "
        "WITHOUT ROWID",
        "CREATE TRIGGER ready_queue_added AFTER INSERT ON queues BEGIN "
        "INSERT OR REPLACE INTO queue_ready VALUES (NEW.name, 0, 0); END",
        "CREATE TRIGGER ready_queue_deleted AFTER DELETE ON queues BEGIN "
        "DELETE FROM queue_ready WHERE queue = OLD.name; END",
        "CREATE TRIGGER ready_insert AFTER INSERT ON messages WHEN NEW.owner IS NULL BEGIN "
        "UPDATE queue_ready SET count = count + 1, bytes = bytes + length(NEW.body) WHERE queue = NEW.queue; "
        "END",
        "CREATE TRIGGER ready_delete AFTER DELETE ON messages WHEN OLD.owner IS NULL BEGIN "
        "UPDATE queue_ready SET count = count - 1, bytes = bytes - length(OLD.body) WHERE queue = OLD.queue; "
        "END",
        "CREATE TRIGGER ready_release AFTER UPDATE OF owner ON messages "
        "WHEN OLD.owner IS NOT NULL AND NEW.owner IS NULL BEGIN "
        "UPDATE queue_ready SET count = count + 1, bytes = bytes + length(NEW.body) WHERE queue = NEW.queue; "
        "END",
        "INSERT INTO queue_ready SELECT queues.name, count(messages.id), total(length(messages.body)) "
        "FROM queues LEFT JOIN messages ON messages.queue = queues.name AND messages.owner IS NULL "
        "GROUP BY queues.name",
    ),
    # Inserts counted in arrears, by the ready mark, and ids without AUTOINCREMENT (see _READY_COUNTS):
    # the table copied into one without it (SQLite cannot drop it in place). The counts schema 3 kept
    # are exact for every row there is.
    4: (
        "DROP TRIGGER ready_insert",
        "DROP TRIGGER ready_delete",
        "DROP TRIGGER ready_release",
        _MARK_START,
        _MESSAGES_TABLE.format(name="messages_4"),
        "INSERT INTO messages_4 SELECT * FROM messages",
        "DROP TABLE messages",
        "ALTER TABLE messages_4 RENAME TO messages",
        "DELETE FROM sqlite_sequence WHERE name='messages'",
        *_MESSAGES_INDEXES,
        _MARK_KEPT,
        *_READY_COUNTS[3:],
    ),
    # Delayed messages.
    5: _DELAYED,
    # Traffic counters, starting at 0 for the queues there are.
    6: _RATES,
    # Fresh rows: a persistent publish writes one page, not two.
    7: _FRESH,
}

_BUILTIN_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def connect(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (kelp issues BEGIN itself), usable from any thread under a lock."""
    if path == ":memory:" or path.startswith("file:"):
        raise UsageError(
            f"sqlite:// needs a file path, not {path!r} (use memory:// for an in-process broker)"
        )
    parent = Path(path).parent
    if not parent.is_dir():
        raise OperationalError(f"cannot open the kelp database {path}: directory {parent} does not exist")
    create_private(path)
    try:
        db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise OperationalError(f"cannot open the kelp database {path}: {exc}") from None
    try:
        _check_marks(db, path)  # before switching to WAL: a foreign file must be left as it was
        # A new file only (an existing one keeps its page size): each commit writes every page it touched
        # into the WAL, and a persistent publish touches the table's last leaf (its row is fresh, out of
        # the ready index: see _FRESH), more when the leaf splits. Half-size pages make that commit
        # cheaper; messages of a few hundred bytes still fit several to a page.
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise OperationalError(f"cannot switch {path} to WAL mode (journal_mode is {mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _open_error(path, exc) from None
    except BaseException:
        db.close()
        raise
    return db


def create_private(path: str) -> None:
    """Create the database file, if it does not exist yet, readable and writable by its owner only (0600,
    whatever the umask). SQLite gives the -wal and -shm files it creates beside it the same mode. An
    existing file keeps its mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise OperationalError(f"cannot create the kelp database {path}: {exc}") from None
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def make_private(path: str) -> None:
    """Make an existing database file and its -wal/-shm files owner-only (0600) if this user owns them."""
    for name in (path, path + "-wal", path + "-shm"):
        with suppress(OSError):
            if os.stat(name).st_uid == os.geteuid():
                os.chmod(name, 0o600)


def _open_error(path: str, exc: sqlite3.DatabaseError) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "locked" not in str(exc) and "busy" not in str(exc):
        return OperationalError(f"cannot open the kelp database {path}: {exc}")
    if isinstance(exc, sqlite3.OperationalError):
        return OperationalError(f"the kelp database {path} is locked: {exc}")
    return InconsistencyError(f"{path} is not a usable kelp database (damaged or not SQLite): {exc}")


def ensure_schema(db: sqlite3.Connection, path: str, now: float) -> None:
    """Check that ``db`` is a kelp database of a version this kelp reads, creating the schema if empty.

    Call inside a write transaction. Raises UsageError for a foreign database, VersionMismatch for a
    newer schema, InconsistencyError for a damaged file.
    """
    try:
        if _check_marks(db, path):
            # One statement at a time: executescript() would commit the caller's transaction first.
            for statement in _DDL.split(";"):
                if statement.strip():
                    db.execute(statement)
            for statement in (*_READY_COUNTS, _MARK_START, *_DELAYED, *_RATES, *_FRESH):
                db.execute(statement)
            db.executemany("INSERT INTO exchanges VALUES (?, ?, 1, 0, 0, '{}')", _BUILTIN_EXCHANGES)
            for statement in _ON_OPEN:
                db.execute(statement)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={target}")
        for statement in _ON_OPEN:
            db.execute(statement)
    except sqlite3.DatabaseError as exc:
        raise _open_error(path, exc) from None


def _check_marks(db: sqlite3.Connection, path: str) -> bool:
    """Raise unless the file is kelp's (of a version this kelp reads) or empty; True if empty."""
    # The marks and the table count are read in one read transaction: another process may be creating
    # the schema right now, and reads in separate transactions could see its application_id still 0 and
    # its user_version already set (a kelp file taken for a foreign one).
    own = not db.in_transaction
    if own:
        db.execute("BEGIN")
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    finally:
        if own:
            db.execute("COMMIT")
    if app_id == 0 and version == 0:
        if tables:
            raise UsageError(f"{path} is an SQLite database of another application, not kelp's")
        return True
    if app_id != APPLICATION_ID:
        raise UsageError(
            f"{path} is an SQLite database of another application (application_id {app_id:#x}), not kelp's"
        )
    if version > SCHEMA_VERSION:
        raise VersionMismatch(
            f"{path} has kelp schema version {version}, newer than this kelp reads ({SCHEMA_VERSION}); "
            "upgrade kelp"
        )
    if version < 1:
        raise InconsistencyError(f"{path} is marked as kelp's but has no schema (version {version})")
    return False


# --- which process is alive ---------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()


def namespace() -> str:
    """Where pids mean the same thing: this boot and this pid namespace (else this host)."""
    ns = ""
    with suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return f"{_boot_id()}/{ns}"


def _stat(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    return text[text.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None where /proc is missing)."""
    fields = _stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def process_state(pid: int, start_time: str | None) -> bool:
    """Whether the process ``pid`` started at ``start_time`` still runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    fields = _stat(pid)
    if fields is None:
        return start_time is None or not os.path.isdir("/proc/self")
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or (len(fields) > 19 and fields[19] == start_time)
