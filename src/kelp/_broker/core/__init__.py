"""The broker core: one session layer (:mod:`.session`) over a small storage protocol (:mod:`.store`)
that each broker kelp runs itself implements (memory, sqlite, postgres), and the sans-IO channel
bookkeeping under it (:mod:`.channel`: consumers, delivery tags, prefetch rooms, unacked deliveries),
which the redis transport shares."""

from kelp._broker.core.session import MAX_CLAIM, Session, Waker
from kelp._broker.core.store import Item, Listener, Store, Unacked

__all__ = ["MAX_CLAIM", "Item", "Listener", "Session", "Store", "Unacked", "Waker"]
