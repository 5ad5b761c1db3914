"""The two AMQP I/O drivers on their own (no transport above them), against the scripted server: the
events the sans-IO core produces reach ``on_event``, a wait ends as soon as its answer arrived, and a lost
connection is reported once to ``on_lost`` and raised again by every later call."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc

import pytest
from amqp_kit import method
from fake_broker import FakeBroker

from kelp import _amqp_io
from kelp.aio import _amqp_io as _aio_amqp_io
from kelp.amqp import ChannelOpened, Connection, ConnectionOpened, Deliver, Event, RemoteProtocolError

pytestmark = pytest.mark.timeout(60)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lost: list[BaseException] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_lost(self, exc: BaseException) -> None:
        self.lost.append(exc)

    def deliveries(self) -> list[Deliver]:
        return [event for event in self.events if isinstance(event, Deliver)]


def test_sync_driver_events_split_frames_and_loss() -> None:
    core = Connection()
    seen = Recorder()
    driver = _amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert driver.wait_for(lambda: core.is_open, 5)
            assert any(isinstance(event, ConnectionOpened) for event in seen.events)
            channel = _open_channel(driver, core, seen)

            # A delivery written one byte at a time, from another thread, while a caller waits for it.
            frames = broker.deliver(channel, "ctag", 7, b"hello driver")
            sender = threading.Thread(target=broker.send_in_pieces, args=(frames,))
            sender.start()
            assert driver.wait_for(seen.deliveries, 10)
            sender.join()
            [delivery] = seen.deliveries()
            assert (delivery.delivery_tag, delivery.body) == (7, b"hello driver")

            # Half a frame, then the socket is cut: one report to on_lost, raised again by every call.
            broker.send(frames[:10])
            broker.cut()
            assert driver.wait_for(lambda: seen.lost, 5)
            [lost] = seen.lost
            assert isinstance(lost, RemoteProtocolError)  # end of file in the middle of a frame
            assert "closed the connection" in str(lost)
            assert driver.error is lost
            with pytest.raises(RemoteProtocolError, match="closed the connection"):
                driver.send(lambda: core.heartbeat())
            assert seen.deliveries() == [delivery]
        finally:
            driver.close()


def test_sync_driver_refuses_a_malformed_frame() -> None:
    core = Connection()
    seen = Recorder()
    driver = _amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert driver.wait_for(lambda: core.is_open, 5)
            broker.send(b"\x01\x00\x00\x00\x00\x00\x04abcd\x00")  # frame end must be 0xCE
            assert driver.wait_for(lambda: seen.lost, 5)
            [lost] = seen.lost
            assert "frame end" in str(lost)
        finally:
            driver.close()


async def test_aio_driver_events_split_frames_and_loss() -> None:
    core = Connection()
    seen = Recorder()
    driver = _aio_amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        await driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert await driver.wait_for(lambda: core.is_open, 5)
            channel = await _aio_open_channel(driver, core, seen)

            frames = broker.deliver(channel, "ctag", 7, b"hello driver")
            sending = asyncio.ensure_future(asyncio.to_thread(broker.send_in_pieces, frames))
            assert await driver.wait_for(seen.deliveries, 10)
            await sending
            [delivery] = seen.deliveries()
            assert (delivery.delivery_tag, delivery.body) == (7, b"hello driver")

            await asyncio.to_thread(broker.send, frames[:10])
            await asyncio.to_thread(broker.cut)
            assert await driver.wait_for(lambda: seen.lost, 5)
            [lost] = seen.lost
            assert isinstance(lost, RemoteProtocolError)
            assert "closed the connection" in str(lost)
            with pytest.raises(RemoteProtocolError, match="closed the connection"):
                await driver.send(lambda: core.heartbeat())
            assert seen.deliveries() == [delivery]
        finally:
            await driver.close()


async def test_aio_driver_refuses_a_malformed_frame() -> None:
    core = Connection()
    seen = Recorder()
    driver = _aio_amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        await driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert await driver.wait_for(lambda: core.is_open, 5)
            await asyncio.to_thread(broker.send, b"\x01\x00\x00\x00\x00\x00\x04abcd\x00")
            assert await driver.wait_for(lambda: seen.lost, 5)
            [lost] = seen.lost
            assert "frame end" in str(lost)
        finally:
            await driver.close()


async def test_aio_driver_answers_a_server_close_and_reports_it() -> None:
    core = Connection()
    seen = Recorder()
    driver = _aio_amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        await driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert await driver.wait_for(lambda: core.is_open, 5)
            await asyncio.to_thread(broker.send, method(0, "connection.close", 320, "forced", 0, 0))
            # the driver writes the close-ok the core queued, on its own
            await asyncio.to_thread(broker.wait_method, "connection.close-ok")
            assert not core.is_open
        finally:
            await driver.close()


def _open(core: Connection, opened: list[int]) -> bytes:
    channel, data = core.open_channel()
    opened.append(channel)
    return data


def _open_channel(driver: _amqp_io.Driver, core: Connection, seen: Recorder) -> int:
    """Open a channel through the sync driver; its number once the broker confirmed it."""
    opened: list[int] = []
    driver.send(lambda: _open(core, opened))
    assert driver.wait_for(lambda: any(isinstance(e, ChannelOpened) for e in seen.events), 5)
    [channel] = opened
    return channel


async def _aio_open_channel(driver: _aio_amqp_io.Driver, core: Connection, seen: Recorder) -> int:
    """Open a channel through the asyncio driver; its number once the broker confirmed it."""
    opened: list[int] = []
    await driver.send(lambda: _open(core, opened))
    assert await driver.wait_for(lambda: any(isinstance(e, ChannelOpened) for e in seen.events), 5)
    [channel] = opened
    return channel


def test_sync_driver_reads_into_one_buffer() -> None:
    # recv(_READ_SIZE) allocated the whole read size for every read, several times the cost of the system
    # call when a small frame came; a read now allocates about what arrived
    core = Connection()
    seen = Recorder()
    driver = _amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert driver.wait_for(lambda: core.is_open, 5)
            channel = _open_channel(driver, core, seen)
            tracemalloc.start()
            try:
                for tag in range(1, 21):
                    broker.send(broker.deliver(channel, "ctag", tag, b"small"))
                    assert driver.wait_for(lambda tag=tag: len(seen.deliveries()) == tag, 5)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < _amqp_io._READ_SIZE // 2
        finally:
            driver.close()


async def test_aio_driver_reads_into_one_buffer() -> None:
    # a plain asyncio.Protocol's transport allocated 256 KiB for every read; the driver's reads land in one
    # buffer of its own, so a small frame allocates about what arrived
    core = Connection()
    seen = Recorder()
    driver = _aio_amqp_io.Driver(core, seen.on_event, seen.on_lost)
    with FakeBroker() as broker:
        await driver.connect("127.0.0.1", broker.port, None, None, 5)
        try:
            assert await driver.wait_for(lambda: core.is_open, 5)
            channel = await _aio_open_channel(driver, core, seen)
            tracemalloc.start()
            try:
                for tag in range(1, 21):
                    await asyncio.to_thread(broker.send, broker.deliver(channel, "ctag", tag, b"small"))
                    assert await driver.wait_for(lambda tag=tag: len(seen.deliveries()) == tag, 5)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < _amqp_io._READ_SIZE // 2
        finally:
            await driver.close()
