"""One pipelined Redis connection: write commands now, read their replies later, in order.

The transport source (``kelp/aio/transport/redis.py``) imports :class:`AsyncWire` as ``Wire``; its generated
sync twin imports :class:`ThreadWire` under the same name. The two differ only in how bytes move:

* ``write`` returns once the kernel has the bytes: ``socket.sendall`` (sync); for asyncio, the transport's
  write buffer is kept at zero bytes (``set_write_buffer_limits(0)``) and drained, so a command that
  ``write`` accepted survives the process being killed right after.
* ``read`` returns the next reply, an error reply as a :class:`~redis.exceptions.ResponseError` value (not
  raised: the caller decides which command it belonged to); ``TimeoutError`` when ``timeout`` passes
  first (the connection stays usable); redis-py's ``ConnectionError`` when the connection is gone.
* ``ready`` tells, without blocking, whether a reply has arrived.

A wire never reconnects by itself: replies owed on a dead socket are never coming, so the caller must
know the connection changed (redis-py's connections reconnect silently, which would lose that).
"""

from __future__ import annotations

from typing import Any

from hiredis import pack_command
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["AsyncWire", "ThreadWire"]


def _pack(args: tuple[Any, ...]) -> list[bytes]:
    # hiredis (a dependency of kelp[redis]) packs in C; redis-py's own packer first re-encodes every
    # argument in Python, which costs more than the rest of a publish.
    return [pack_command(args)]


def _closed() -> RedisConnectionError:
    return RedisConnectionError("the pipelined redis connection is closed")


class AsyncWire:
    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self._conn: Any = pool.connection_class(**pool.connection_kwargs)
        self._writer: Any = None
        self._open = False
        #: Whether the last write's bytes are all in the socket or the transport (which sends them even
        #: if the writer is cancelled while draining), so the pipe is still whole.
        self.committed = False

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        await self._conn.connect()
        # redis-py's own send wraps every write in a timer task; we write to its stream directly. A zero
        # high-water mark makes drain() wait until the bytes are in the kernel, not in our buffer.
        self._writer = self._conn._writer
        self._writer.transport.set_write_buffer_limits(high=0)
        self._open = True

    def pack(self, *args: Any) -> list[bytes]:
        return _pack(args)

    async def write(self, chunks: list[bytes]) -> None:
        if not self._open:
            raise _closed()
        self.committed = False
        try:
            self._writer.writelines(chunks)
            self.committed = True
            await self._writer.drain()
        except OSError as exc:
            await self.close()
            raise RedisConnectionError(f"writing to redis failed: {exc}") from exc

    async def read(self, timeout: float | None = None) -> Any:
        if not self._open:
            raise _closed()
        try:
            # Never disconnected by redis-py: a read cancelled halfway resumes where it stopped.
            reply = await self._conn.read_response(timeout=timeout, disconnect_on_error=False)
        except ResponseError as exc:
            return exc
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if timeout is None:
                await self.close()
            raise
        if reply is None and timeout is not None:
            raise TimeoutError("no reply from redis within the timeout")
        return reply

    async def ready(self) -> bool:
        if not self._open:
            return False
        try:
            return bool(await self._conn.can_read())
        except (RedisConnectionError, OSError):
            return True  # the next read raises the error

    async def close(self) -> None:
        self._open = False
        await self._conn.disconnect(nowait=True)


class ThreadWire:
    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self._conn: Any = pool.connection_class(**pool.connection_kwargs)
        self._open = False
        self.committed = False  # a failed sendall may have sent part of a command

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self._conn.connect()
        self._open = True

    def pack(self, *args: Any) -> list[bytes]:
        return _pack(args)

    def write(self, chunks: list[bytes]) -> None:
        if not self._open:
            raise _closed()
        try:
            self._conn.send_packed_command(chunks, check_health=False)
        except BaseException:
            self._open = False
            raise

    def read(self, timeout: float | None = None) -> Any:
        if not self._open:
            raise _closed()
        try:
            if timeout is None:
                return self._conn.read_response()
            return self._conn.read_response(timeout=timeout, disconnect_on_error=False)
        except ResponseError as exc:
            return exc
        except (TimeoutError, RedisTimeoutError) as exc:
            if timeout is None:
                self.close()
                raise
            raise TimeoutError("no reply from redis within the timeout") from exc
        except BaseException:
            self.close()
            raise

    def ready(self) -> bool:
        if not self._open:
            return False
        try:
            return bool(self._conn.can_read(0))
        except (RedisConnectionError, OSError):
            return True  # the next read raises the error

    def close(self) -> None:
        self._open = False
        self._conn.disconnect()
