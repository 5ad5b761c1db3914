"""When the sqlite store commits, polls, beats and reaps: its timing constants, in one place."""

#: Buffered publishes are committed by the flusher thread this many seconds after the first one...
LINGER = 0.001
#: ...or as soon as this many wait. The flusher's inserts run in SQLite without the GIL, overlapping the
#: publishing thread's Python work. But the flusher waits for the GIL after each statement - up to the
#: 5 ms switch interval while a publisher keeps a core busy - holding the database's write lock. So when
#: other processes share the file, the publishing thread commits full batches itself, and the flusher
#: commits only once the publisher pauses, or the publisher at MAX_LINGER.
BATCH = 512
MAX_LINGER = 0.02
#: A transient publish routes on the process's snapshot of the topology when it was known current this
#: recently (a persistent or unroutable one always checks first): a change another process made is seen
#: by the transient publishes that begin this long after it committed.
FRESH_TOPOLOGY = 0.002
#: Buffered acks (and releases) are committed by the next transaction of the process - a consumer's next
#: claim, usually - or by the flusher this many seconds after the first: each commit of its own would take
#: the database's write lock from the processes that publish and consume.
ACK_LINGER = 0.05
#: Alone on the file, a buffer this long is committed by the publishing thread itself: the flusher is not
#: keeping up (under load it commits a few thousand messages at a time).
HIGH_WATER = 32 * BATCH
#: data_version polling while a connection waits: starts fast, backs off while nothing changes.
POLL_MIN = 0.0005
POLL_MAX = 0.004
HEARTBEAT_EVERY = 1.0
#: How often the flusher looks for dead processes (a pid check each: cheap), to release their unacked
#: messages: often while a consumer of this process waits for messages, so that it gets them within a
#: fraction of a second of the kill; less often otherwise.
REAP_WHILE_WAITING = 0.25
REAP_IDLE = 0.5
#: The asyncio face commits persistent publishes on the event loop's thread when that is quick: the
#: writer free, no fsync (synchronous=normal), another process not writing, at most this many rows.
INLINE_MAX = 64
#: After this many one-row INSERTs (which leave the ready counts in arrears: see _schema._READY_COUNTS)
#: a publisher brings the counts up to date itself, so that no transaction has more than a few thousand
#: rows to count, however long this process publishes alone.
FOLD_EVERY = 1024
