"""The MQTT client adapter (edge_agent.sinks.mqtt_client) against a real Mosquitto on loopback:
its connection ends, its failures named in one exception family, and nothing left open."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import pytest
from helpers.aio import until
from helpers.mosquitto import Mosquitto
from helpers.net import free_port
from helpers.subscriber import Subscriber
from helpers.tls import make_pki

from edge_agent.sinks.mqtt_client import (
    ConnectFailed,
    ConnectTimeout,
    LinkLost,
    MqttClient,
    MqttError,
    Will,
)

WILL = "t/will"


def client(broker: Mosquitto, name: str, **kw: object) -> MqttClient:
    return MqttClient(
        broker.host,
        broker.port,
        client_id=name,
        will=Will(WILL, b"gone", qos=1, retain=False),
        keepalive_s=5,
        connect_timeout_s=2.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_drop_leaves_the_will_and_disconnect_does_not(mosquitto: Mosquitto) -> None:
    async with Subscriber(mosquitto.host, mosquitto.port, WILL) as sub:
        clean = client(mosquitto, "clean")
        await clean.connect(2.0)
        assert clean.is_connected
        await clean.disconnect(2.0)
        assert not clean.is_connected
        assert not clean.lost.done()  # our DISCONNECT is not a loss

        dropped = client(mosquitto, "dropped")
        await dropped.connect(2.0)
        dropped.drop()
        dropped.drop()  # a no-op the second time
        (will,) = await sub.collect(1)
        assert will.payload == b"gone"
        assert not dropped.is_connected
    assert not clean.socket_open and not dropped.socket_open


async def test_publish_subscribe_and_acknowledgements(mosquitto: Mosquitto) -> None:
    got: list[tuple[str, bytes, bool]] = []
    c = client(mosquitto, "roundtrip", on_message=lambda *m: got.append(m))
    await c.connect(2.0)
    try:
        codes = await c.subscribe("t/#", qos=1, timeout_s=2.0)
        assert [code.value for code in codes] == [1]
        acks: list[int] = []
        c.on_ack = lambda mid, rc: acks.append(mid)
        infos = [c.publish_nowait("t/a", bytes([i]), qos=1, retain=False) for i in range(50)]
        await c.publish("t/b", b"last", qos=1, retain=False, timeout_s=2.0)
        await until(lambda: len(got) == 51, 5.0)
        assert all(i.is_published() for i in infos)
        assert acks[:50] == [i.mid for i in infos]  # acknowledged in publish order
        assert [p for _, p, _ in got] == [*(bytes([i]) for i in range(50)), b"last"]
    finally:
        await c.disconnect(2.0)


async def test_a_broker_that_goes_away_completes_lost(mosquitto: Mosquitto) -> None:
    c = client(mosquitto, "loser")
    await c.connect(2.0)
    mosquitto.kill()
    async with asyncio.timeout(5.0):
        loss = await c.lost
    assert isinstance(loss, LinkLost) and isinstance(loss, MqttError)
    assert "lost" in str(loss)
    with pytest.raises(MqttError):
        await c.publish("t/x", b"", qos=1, retain=False, timeout_s=1.0)
    c.drop()
    assert not c.socket_open


async def test_connect_failures_are_named() -> None:
    closed = MqttClient("127.0.0.1", free_port("127.0.0.1"), client_id="x", connect_timeout_s=2.0)
    with pytest.raises(ConnectFailed) as failed:
        await closed.connect(2.0)
    assert not failed.value.tls and "refused" in str(failed.value).lower()

    # A peer that takes the connection and never answers CONNECT.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        mute = MqttClient("127.0.0.1", port, client_id="y", connect_timeout_s=2.0)
        with pytest.raises(ConnectTimeout):
            await mute.connect(0.5)
        assert not mute.socket_open
        # Cancelled while waiting for CONNACK: the socket is closed all the same.
        waiting = MqttClient("127.0.0.1", port, client_id="z", connect_timeout_s=2.0)
        task = asyncio.create_task(waiting.connect(30.0))
        await until(lambda: waiting.socket_open, 5.0)
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
        # At once, or when paho's connect() in its thread returns (it cannot be cancelled).
        await until(lambda: not waiting.socket_open, 5.0)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connect_cancelled_in_its_thread_closes_what_the_thread_opened(
    tmp_path: Path,
) -> None:
    """paho's connect() (TCP, TLS handshake) runs in a thread that cannot be cancelled. A peer
    that holds the TLS handshake keeps it there while the caller is cancelled; once the
    handshake completes and the thread returns, the client closes the connection (the peer
    sees EOF), instead of leaving it open with nobody to read it."""
    pki = make_pki(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = int(listener.getsockname()[1])
    try:
        accepting = asyncio.create_task(loop.sock_accept(listener))
        client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        c = MqttClient(
            "localhost", port, client_id="t", tls_context=client_ctx, connect_timeout_s=10.0
        )
        task = asyncio.create_task(c.connect(5.0))
        async with asyncio.timeout(5.0):
            conn, _ = await accepting
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
        c.drop()  # as the sink does on the way out: deferred while the thread runs
        # Now the handshake, in the client's thread, after the cancellation: the ClientHello
        # waits unread in the socket until here.
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_accepted_socket(
            lambda: asyncio.StreamReaderProtocol(reader), conn, ssl=server_ctx
        )
        # The handshake succeeded (connect_accepted_socket returned): the thread's connect()
        # returned a connection. The client closes it: EOF, or a reset when the server's TLS
        # session tickets were still unread. Left open, the read would time out.
        try:
            async with asyncio.timeout(5.0):
                with contextlib.suppress(ConnectionResetError):
                    while await reader.read(65536):
                        pass
        finally:
            transport.close()
        await until(lambda: not c.socket_open, 5.0)
    finally:
        listener.close()
