"""amqps:// end to end: kelp's TLS client through a TLS-terminating proxy in front of the test broker.

The proxy presents a self-signed certificate made by openssl for this test; the client verifies it (a
context or ``ssl={"cafile": ...}``) and a client without the CA refuses to connect.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kelp_rabbitmq_kit import Proxy, self_signed_certificate

import kelp
import kelp.aio
from kelp._envelope import Envelope
from kelp.exceptions import ConnectionError


@pytest.fixture
def tls_proxy(amqp_port: int, tmp_path: Path) -> Iterator[tuple[Proxy, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = self_signed_certificate(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    proxy = Proxy(amqp_port, tls=server)
    try:
        yield proxy, cert
    finally:
        proxy.close()


def test_amqps_with_a_verified_certificate(
    tls_proxy: tuple[Proxy, Path], names: Callable[[str], str]
) -> None:
    proxy, cert = tls_proxy
    queue = names("q")
    url = f"amqps://guest:guest@127.0.0.1:{proxy.port}/"
    with kelp.Connection(url, ssl={"cafile": str(cert)}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        assert ch.publish_batch([Envelope(b"secret" * 1000, {}, {}, "", queue) for _ in range(50)]) == []
        bodies = []
        while (message := ch.basic_get(queue, no_ack=True)) is not None:
            bodies.append(message.body)
        assert bodies == [b"secret" * 1000] * 50


async def test_amqps_aio_with_a_context(tls_proxy: tuple[Proxy, Path], names: Callable[[str], str]) -> None:
    proxy, cert = tls_proxy
    queue = names("q")
    context = ssl.create_default_context(cafile=str(cert))
    async with kelp.aio.Connection(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", ssl=context) as conn:
        ch = await conn.channel()
        await ch.queue_declare(queue)
        assert await ch.publish_batch([Envelope(b"hi", {}, {}, "", queue)]) == []
        message = await ch.basic_get(queue)
        assert message is not None
        assert message.body == b"hi"


def test_amqps_refuses_an_unknown_certificate(tls_proxy: tuple[Proxy, Path]) -> None:
    proxy, _ = tls_proxy
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        kelp.Connection(f"amqps://guest:guest@127.0.0.1:{proxy.port}/", connect_timeout=5).connect()
