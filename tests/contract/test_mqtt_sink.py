"""The MQTT sink against a real broker on loopback (DESIGN §4).

Tests that need no broker-specific configuration run against both Mosquitto and amqtt (the
``broker`` fixture); password files and TLS are configured for Mosquitto only."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
from helpers.aio import until
from helpers.amqtt_broker import Amqtt, AnyBroker
from helpers.mosquitto import Mosquitto, MosquittoFactory, make_password_file
from helpers.subscriber import Received, Subscriber
from helpers.tls import Pki, make_pki

from edge_agent.config.schema import MqttConfig, MqttProtocol, TlsConfig
from edge_agent.errors import BrokerRefusedError, SinkError
from edge_agent.model import OutMessage
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox

SITE = "plant1"
PREFIX = "edge-agent"
STATUS = f"{PREFIX}/{SITE}/status"
HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def config(broker: AnyBroker, **overrides: object) -> MqttConfig:
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "timeout_s": 2.0,
        "keepalive_s": 5.0,
    }
    values.update(overrides)
    return MqttConfig(**values)  # type: ignore[arg-type]


def msg(line: str, suffix: str, n: int) -> OutMessage:
    return OutMessage(
        line=line,
        topic_suffix=suffix,
        payload={"schema": "test/1", "site": SITE, "line": line, "n": n},
        retain=suffix != "kpi/shift",
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.sqlite")
    yield box
    box.close()


@asynccontextmanager
async def running(
    sink: MqttSink, close_timeout_s: float = 5.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the sink as the supervisor would; on exit close it (if it still runs) and reap it."""
    task = asyncio.create_task(sink.run(), name="mqtt-sink")
    try:
        yield task
    finally:
        if not task.done():
            await sink.close(close_timeout_s)
        await asyncio.wait([task], timeout=15.0)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: a test that cares awaited it already


STATUS_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "schemas" / "status.schema.json").read_text()
)


def status_of(r: Received) -> str:
    doc = r.json()
    jsonschema.validate(doc, STATUS_SCHEMA)
    assert doc["site"] == SITE
    assert isinstance(doc["ts"], str) and doc["ts"].endswith("+00:00")
    return str(doc["status"])


async def retained(broker: AnyBroker, topic_filter: str, n: int) -> list[Received]:
    """What a fresh subscriber gets: the retained messages (``n`` of them expected)."""
    async with Subscriber(broker.host, broker.port, topic_filter) as sub:
        return await sub.collect(n, 5.0)


async def test_online_retained_on_connect_and_offline_on_close(
    broker: AnyBroker, outbox: Outbox
) -> None:
    sink = MqttSink(config(broker), site=SITE, outbox=outbox)
    async with Subscriber(broker.host, broker.port, STATUS) as live:
        async with running(sink) as task:
            first = await live.collect(1)
            assert status_of(first[0]) == "online"
            (fresh,) = await retained(broker, STATUS, 1)
            assert fresh.retain
            assert status_of(fresh) == "online"
            assert sink.connected
            await sink.close(5.0)
            await asyncio.wait_for(task, 5.0)  # run() returns after close()
        assert not sink.connected
        assert [status_of(r) for r in await live.collect(2)] == ["online", "offline"]
    (fresh,) = await retained(broker, STATUS, 1)
    assert fresh.retain
    assert status_of(fresh) == "offline"
    # After close(), a restart by the supervisor is a no-op.
    await asyncio.wait_for(sink.run(), 1.0)


@pytest.mark.parametrize("protocol", [MqttProtocol.V311, MqttProtocol.V5])
async def test_messages_arrive_in_order_with_topics_retain_qos_and_seq(
    broker: AnyBroker, outbox: Outbox, protocol: MqttProtocol
) -> None:
    if isinstance(broker, Amqtt) and protocol is MqttProtocol.V5:
        pytest.skip("amqtt speaks MQTT 3.1.1 only (docs/mqtt.md, Brokers)")
    sink = MqttSink(config(broker, protocol=protocol), site=SITE, outbox=outbox, window=32)
    # Appended before and after the sink starts: both paths (backlog, notify) are exercised.
    first = [msg(f"l{i % 2}", ("kpi", "state", "kpi/shift")[i % 3], i) for i in range(150)]
    second = [msg(f"l{i % 2}", ("kpi", "state", "kpi/shift")[i % 3], i) for i in range(150, 250)]
    expected = [*first, *second]
    async with Subscriber(broker.host, broker.port, f"{PREFIX}/{SITE}/+/#") as sub:
        seqs = outbox.append(first)
        async with running(sink):
            await sub.collect(1 + len(first), 10.0)  # with the status
            seqs += outbox.append(second)
            sink.notify()
            got = await sub.collect(1 + len(expected), 10.0)
            await until(lambda: sink.published_total == len(expected), 5.0)
        assert outbox.depth() == 0
    assert got[0].topic == STATUS  # online comes before any report
    got = got[1:]

    assert [r.topic for r in got] == [
        f"{PREFIX}/{SITE}/{m.line}/{m.topic_suffix}" for m in expected
    ]
    docs = [r.json() for r in got]
    assert [d["n"] for d in docs] == list(range(len(expected)))
    assert [d["seq"] for d in docs] == seqs
    assert all(r.qos == 1 for r in got)
    for line in ("l0", "l1"):
        line_seqs = [d["seq"] for d in docs if d["line"] == line]
        assert line_seqs == list(range(line_seqs[0], line_seqs[0] + len(line_seqs)))

    # Retain flags: a fresh subscriber gets the last kpi and state of each line and the
    # status, never a kpi/shift.
    fresh = await retained(broker, f"{PREFIX}/{SITE}/#", 5)
    assert all(r.retain for r in fresh)
    by_topic = {r.topic: r.json() for r in fresh}
    assert set(by_topic) == {
        STATUS,
        *(f"{PREFIX}/{SITE}/{line}/{s}" for line in ("l0", "l1") for s in ("kpi", "state")),
    }
    last_l0_kpi = max(
        i for i, m in enumerate(expected) if (m.line, m.topic_suffix) == ("l0", "kpi")
    )
    assert by_topic[f"{PREFIX}/{SITE}/l0/kpi"]["n"] == last_l0_kpi


async def test_mqtt5_to_a_3_1_1_only_broker_fails_with_a_clear_error(
    tmp_path: Path, outbox: Outbox
) -> None:
    # amqtt drops an MQTT 5 CONNECT without a CONNACK: the sink must say so, not hang.
    pytest.importorskip("amqtt", reason="amqtt (the 'demo' extra) is the second broker")
    amqtt = Amqtt(tmp_path / "amqtt")
    amqtt.start(attempts=3)
    try:
        sink = MqttSink(config(amqtt, protocol=MqttProtocol.V5), site=SITE, outbox=outbox)
        with pytest.raises(SinkError, match=r"did not answer CONNECT|lost|refused"):
            await asyncio.wait_for(sink.run(), 10.0)
        assert not sink.connected
    finally:
        amqtt.close()


async def test_rows_stay_until_puback_and_arrive_after_an_outage(
    broker: AnyBroker, outbox: Outbox
) -> None:
    sink = MqttSink(config(broker, timeout_s=1.0), site=SITE, outbox=outbox)
    async with running(sink) as task:
        await until(lambda: sink.connected, 5.0)
        async with Subscriber(broker.host, broker.port, STATUS) as sub:
            await sub.collect(1)  # online is through: the sink is in its publish loop
        broker.pause()  # the connection stays up, but no PUBACK will come
        seqs = outbox.append([msg("l1", "kpi/shift", i) for i in range(20)])
        sink.notify()
        with pytest.raises(SinkError, match=r"PUBACK|timed out"):
            await asyncio.wait_for(task, 10.0)
    assert outbox.depth() == 20
    assert sink.published_total == 0
    assert sink.last_error is not None

    # The frozen broker is gone for good (anything it had is lost), a new one takes its port.
    broker.stop()
    with pytest.raises(SinkError, match="cannot connect"):
        await asyncio.wait_for(sink.run(), 10.0)
    assert outbox.depth() == 20
    broker.start()

    async with (
        Subscriber(broker.host, broker.port, f"{PREFIX}/{SITE}/l1/#") as sub,
        running(sink),  # the supervisor's restart
    ):
        got = await sub.collect(20, 10.0)
        await until(lambda: outbox.depth() == 0, 5.0)
    assert [r.json()["seq"] for r in got] == seqs
    assert seqs == list(range(seqs[0], seqs[0] + 20))
    assert sink.published_total == 20


async def test_connection_loss_while_idle_fails_run_promptly(
    broker: AnyBroker, outbox: Outbox
) -> None:
    sink = MqttSink(config(broker, timeout_s=5.0, keepalive_s=60.0), site=SITE, outbox=outbox)
    async with running(sink) as task:
        async with Subscriber(broker.host, broker.port, STATUS) as sub:
            await sub.collect(1)
        broker.stop()
        # Well under both the keepalive and the network timeout: the loss itself wakes run().
        with pytest.raises(SinkError, match="lost"):
            await asyncio.wait_for(task, 3.0)
        assert not sink.connected


async def test_last_will_offline_when_the_agent_dies(broker: AnyBroker, tmp_path: Path) -> None:
    async with Subscriber(broker.host, broker.port, STATUS) as sub:
        # A plain Popen: it returns at once, and the child is killed and reaped below.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable,
                str(HELPERS / "sink_process.py"),
                broker.host,
                str(broker.port),
                SITE,
                str(tmp_path / "child" / "outbox.sqlite"),
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            assert status_of((await sub.collect(1, 20.0))[0]) == "online"
            proc.kill()  # no DISCONNECT: the kernel closes the socket, the broker sends the will
            proc.wait(timeout=10)
            got = await sub.collect(2, 10.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert status_of(got[1]) == "offline"
    (fresh,) = await retained(broker, STATUS, 1)
    assert fresh.retain
    assert status_of(fresh) == "offline"


async def test_cancelled_run_leaves_the_will_to_say_offline(
    broker: AnyBroker, outbox: Outbox
) -> None:
    sink = MqttSink(config(broker), site=SITE, outbox=outbox)
    async with Subscriber(broker.host, broker.port, STATUS) as sub:
        task = asyncio.create_task(sink.run())
        assert status_of((await sub.collect(1))[0]) == "online"
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
        got = await sub.collect(2)
        assert status_of(got[1]) == "offline"
        assert not sink.connected


async def test_close_drains_the_outbox_before_offline(broker: AnyBroker, outbox: Outbox) -> None:
    sink = MqttSink(config(broker), site=SITE, outbox=outbox, window=50)
    seqs = outbox.append([msg("l1", "kpi/shift", i) for i in range(500)])
    async with Subscriber(broker.host, broker.port, f"{PREFIX}/{SITE}/#") as sub:
        async with running(sink) as task:
            await until(lambda: sink.connected, 5.0)
            await sink.close(10.0)
            await asyncio.wait_for(task, 1.0)
        got = await sub.collect(502, 10.0)
    assert outbox.depth() == 0
    assert status_of(got[0]) == "online"
    assert status_of(got[-1]) == "offline"
    assert [r.json()["seq"] for r in got[1:-1]] == seqs


async def test_close_without_run_returns_at_once(broker: AnyBroker, outbox: Outbox) -> None:
    sink = MqttSink(config(broker), site=SITE, outbox=outbox)
    await asyncio.wait_for(sink.close(10.0), 0.5)
    await asyncio.wait_for(sink.run(), 0.5)
    assert not sink.connected


async def test_refused_credentials_raise_broker_refused(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, tmp_path: Path
) -> None:
    passwd = make_password_file(tmp_path / "passwd", "agent", "right")
    broker = mosquitto_factory(extra_conf=f"allow_anonymous false\npassword_file {passwd}\n")
    seqs = outbox.append([msg("l1", "kpi", 0)])
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("wrong\n")
    sink = MqttSink(
        config(broker, username="agent", password_file=str(wrong)), site=SITE, outbox=outbox
    )
    with pytest.raises(
        BrokerRefusedError, match=r"refused the connection: .*(Not authorized|user name|password)"
    ):
        await asyncio.wait_for(sink.run(), 10.0)
    assert "refused" in (sink.last_error or "")
    assert [r.seq for r in outbox.peek(10)] == seqs

    anonymous = MqttSink(config(broker), site=SITE, outbox=outbox)
    with pytest.raises(BrokerRefusedError, match="refused"):
        await asyncio.wait_for(anonymous.run(), 10.0)
    assert outbox.depth() == 1

    # The right password (trailing newline stripped) gets through and delivers.
    right = tmp_path / "right.secret"
    right.write_text("right\n")
    good = MqttSink(
        config(broker, username="agent", password_file=str(right)), site=SITE, outbox=outbox
    )
    async with running(good):
        await until(lambda: outbox.depth() == 0, 10.0)
    assert good.published_total == 1


async def test_unreadable_password_file_is_a_sink_error(
    broker: AnyBroker, outbox: Outbox, tmp_path: Path
) -> None:
    sink = MqttSink(
        config(broker, username="agent", password_file=str(tmp_path / "missing")),
        site=SITE,
        outbox=outbox,
    )
    with pytest.raises(SinkError, match="password_file"):
        await sink.run()


async def test_seq_continues_across_outbox_reopen(broker: AnyBroker, tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite"
    got: list[int] = []
    async with Subscriber(broker.host, broker.port, f"{PREFIX}/{SITE}/l1/#") as sub:
        for round_ in range(2):  # two agent lifetimes on the same state directory
            box = Outbox(path)
            try:
                box.append([msg("l1", "state", round_ * 10 + i) for i in range(3)])
                sink = MqttSink(config(broker), site=SITE, outbox=box)
                async with running(sink):
                    await until(lambda b=box: b.depth() == 0, 10.0)  # type: ignore[misc]
            finally:
                box.close()
        got = [json.loads(r.payload)["seq"] for r in await sub.collect(6)]
    assert got == list(range(got[0], got[0] + 6))


@pytest.fixture
def tls_broker(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> tuple[Mosquitto, Pki]:
    """Mosquitto with TLS only, requiring a client certificate from the test CA."""
    pki = make_pki(tmp_path / "pki")
    broker = mosquitto_factory(
        extra_conf=(
            f"cafile {pki.ca_cert}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            "require_certificate true\ntls_version tlsv1.2\n"
        )
    )
    return broker, pki


async def test_tls_with_ca_and_client_certificate(
    tls_broker: tuple[Mosquitto, Pki], outbox: Outbox
) -> None:
    broker, pki = tls_broker
    tls = TlsConfig(
        ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    outbox.append([msg("l1", "kpi", 0)])
    sink = MqttSink(config(broker, host="localhost", tls=tls), site=SITE, outbox=outbox)
    async with running(sink):
        await until(lambda: outbox.depth() == 0, 10.0)
    assert sink.published_total == 1


async def test_tls_checks_the_host_name_unless_insecure(
    tls_broker: tuple[Mosquitto, Pki], outbox: Outbox
) -> None:
    broker, pki = tls_broker
    tls = TlsConfig(
        ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    # The certificate names "localhost", not "127.0.0.1".
    sink = MqttSink(config(broker, host="127.0.0.1", tls=tls), site=SITE, outbox=outbox)
    with pytest.raises(BrokerRefusedError, match="TLS"):
        await asyncio.wait_for(sink.run(), 10.0)

    insecure = TlsConfig(
        ca_file=str(pki.ca_cert),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
        insecure=True,
    )
    outbox.append([msg("l1", "kpi", 0)])
    sink = MqttSink(config(broker, host="127.0.0.1", tls=insecure), site=SITE, outbox=outbox)
    async with running(sink):
        await until(lambda: outbox.depth() == 0, 10.0)


@pytest.mark.parametrize("ca", ["system", "other"])
async def test_tls_rejects_a_broker_signed_by_an_unknown_ca(
    tls_broker: tuple[Mosquitto, Pki], outbox: Outbox, ca: str
) -> None:
    broker, pki = tls_broker
    # "system": no ca_file, so the system trust store, which does not know the test CA.
    tls = TlsConfig(
        ca_file=str(pki.other_ca_cert) if ca == "other" else None,
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    seqs = outbox.append([msg("l1", "kpi", 0)])
    sink = MqttSink(config(broker, host="localhost", tls=tls), site=SITE, outbox=outbox)
    with pytest.raises(BrokerRefusedError, match=r"TLS.*certificate verify failed"):
        await asyncio.wait_for(sink.run(), 10.0)
    assert [r.seq for r in outbox.peek(10)] == seqs


@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
async def test_mutual_tls_refuses_a_client_certificate_from_an_unknown_ca(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, outbox: Outbox, version: str
) -> None:
    """With TLS 1.2 the handshake itself fails; with TLS 1.3 the broker's verdict arrives after
    it, and used to surface only as a CONNACK timeout: both must say what went wrong."""
    pki = make_pki(tmp_path / "pki")
    broker = mosquitto_factory(
        extra_conf=(
            f"cafile {pki.ca_cert}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            f"require_certificate true\ntls_version {version}\n"
        )
    )
    seqs = outbox.append([msg("l1", "kpi", 0)])
    stranger = TlsConfig(
        ca_file=str(pki.ca_cert), cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key)
    )
    sink = MqttSink(config(broker, host="localhost", tls=stranger), site=SITE, outbox=outbox)
    # Under load the broker may close the socket before its alert is read ("EOF occurred"):
    # still a TLS refusal with the hint, though the reason itself is then unknown to the client.
    with pytest.raises(
        BrokerRefusedError, match=r"TLS with broker .*(UNKNOWN_CA|unknown ca|EOF occurred)"
    ):
        await asyncio.wait_for(sink.run(), 10.0)
    if version == "tlsv1.3":
        assert "client certificate" in (sink.last_error or "")
    assert [r.seq for r in outbox.peek(10)] == seqs

    # No client certificate at all: refused as well.
    anonymous = TlsConfig(ca_file=str(pki.ca_cert))
    sink = MqttSink(config(broker, host="localhost", tls=anonymous), site=SITE, outbox=outbox)
    with pytest.raises(BrokerRefusedError, match="TLS"):
        await asyncio.wait_for(sink.run(), 10.0)
    assert outbox.depth() == 1

    # The certificate from the broker's CA gets through and delivers what was kept.
    good = TlsConfig(
        ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    sink = MqttSink(config(broker, host="localhost", tls=good), site=SITE, outbox=outbox)
    async with running(sink):
        await until(lambda: outbox.depth() == 0, 10.0)
    assert sink.published_total == 1


def test_tls_context_is_tls_1_2_or_newer_and_verifies(tmp_path: Path) -> None:
    import ssl

    from edge_agent.sinks.mqtt import build_tls_context

    pki = make_pki(tmp_path / "pki")
    ctx = build_tls_context(str(pki.ca_cert), None, None, insecure=False)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    insecure = build_tls_context(str(pki.ca_cert), None, None, insecure=True)
    assert insecure.verify_mode is ssl.CERT_REQUIRED and not insecure.check_hostname


@pytest.mark.parametrize(
    ("protocol", "clean", "expect"),
    [
        (MqttProtocol.V311, True, "p2, c1"),
        (MqttProtocol.V311, False, "p2, c0"),
        (MqttProtocol.V5, True, "p5, c1"),
        (MqttProtocol.V5, False, "p5, c0"),
    ],
)
async def test_session_flags_reach_the_broker(
    mosquitto: Mosquitto, outbox: Outbox, protocol: MqttProtocol, clean: bool, expect: str
) -> None:
    cfg = config(mosquitto, protocol=protocol, clean_session=clean, client_id="session-test")
    sink = MqttSink(cfg, site=SITE, outbox=outbox)
    async with Subscriber(mosquitto.host, mosquitto.port, STATUS) as live, running(sink):
        await live.collect(1)
    # Mosquitto logs each connect as "... as CLIENT_ID (pPROTOCOL, cCLEAN, kKEEPALIVE)", with
    # p2 for MQTT 3.1.1 and p5 for MQTT 5.
    connects = [ln for ln in mosquitto.log_tail(200).splitlines() if "as session-test (" in ln]
    assert connects and expect in connects[-1], connects


async def test_a_publish_the_broker_refuses_is_counted_logged_and_does_not_block_the_rest(
    mosquitto_factory: MosquittoFactory,
    tmp_path: Path,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MQTT 5: a PUBACK with a failure reason code (here: an ACL) is not a delivery."""
    acl = tmp_path / "acl"
    acl.write_text(
        f"topic readwrite {PREFIX}/{SITE}/status\ntopic readwrite {PREFIX}/{SITE}/ok/#\n"
    )
    broker = mosquitto_factory(extra_conf=f"acl_file {acl}\n")
    outbox.append([msg("ok", "kpi", 0), msg("denied", "kpi", 1), msg("ok", "kpi", 2)])
    sink = MqttSink(config(broker, protocol=MqttProtocol.V5), site=SITE, outbox=outbox)
    topics = f"{PREFIX}/{SITE}/+/kpi"
    async with Subscriber(broker.host, broker.port, topics) as sub, running(sink):
        got = await sub.collect(2)
        await until(lambda: outbox.depth() == 0, 5.0)
    assert [r.json()["n"] for r in got] == [0, 2]
    assert (sink.published_total, sink.refused_total) == (2, 1)
    refusals = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(refusals) == 1 and "'denied'" in refusals[0] and "Not authorized" in refusals[0]


async def test_close_stops_taking_rows_when_the_drain_time_is_up(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    """While PUBACKs keep coming, the pump must still stop refilling at the deadline."""
    outbox.append([msg("l1", "kpi", n) for n in range(3000)])
    sink = MqttSink(config(mosquitto), site=SITE, outbox=outbox, window=1)
    async with Subscriber(mosquitto.host, mosquitto.port, STATUS) as live:
        async with running(sink) as task:
            await until(lambda: sink.published_total > 0, 5.0)
            await sink.close(0.05)
            await asyncio.wait_for(task, 10.0)  # returns, with the link closed cleanly
        assert [status_of(r) for r in await live.collect(2)] == ["online", "offline"]
    assert 0 < outbox.depth() < 3000


async def test_rows_of_another_qos_wait_for_the_ones_in_flight(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    """After a QoS change (a reload), paho would send the QoS 0 rows at once, ahead of the QoS 1
    rows it still queues behind its in-flight limit: outbox order must hold anyway."""
    qos1 = [msg("l1", "kpi/shift", n) for n in range(300)]
    qos0 = [replace(m, qos=0) for m in (msg("l1", "kpi/shift", n) for n in range(300, 400))]
    outbox.append(qos1 + qos0)
    sink = MqttSink(config(mosquitto), site=SITE, outbox=outbox, window=20)
    topics = f"{PREFIX}/{SITE}/l1/#"
    async with Subscriber(mosquitto.host, mosquitto.port, topics) as sub, running(sink):
        got = await sub.collect(400, 20.0)
    assert [r.json()["n"] for r in got] == list(range(400))


async def test_an_acl_that_silently_drops_our_messages_under_3_1_1_is_noticed_once(
    mosquitto_factory: MosquittoFactory,
    tmp_path: Path,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MQTT 3.1.1: Mosquitto PUBACKs a publish its ACL denies and drops it. The agent's own
    retained `online` never comes back on its status subscription: that is logged once, and
    what the broker acknowledged on that link is counted as unconfirmed."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite other-prefix/#\n")  # the agent's prefix is outside it
    broker = mosquitto_factory(extra_conf=f"acl_file {acl}\n")
    outbox.append([msg("l1", "kpi", n) for n in range(3)])
    sink = MqttSink(config(broker), site=SITE, outbox=outbox)
    async with running(sink) as task:
        await until(lambda: sink.status_echo_missing, 10.0)
        await until(lambda: outbox.depth() == 0, 5.0)  # "acknowledged" into the void
        assert sink.published_total == 3
        assert sink.unconfirmed_total == 3
        assert not task.done()  # publishing goes on: the broker may deny only our reading
    assert sink.unconfirmed_total == 3
    warnings = [r.getMessage() for r in caplog.records if "never delivered" in r.getMessage()]
    assert warnings == [
        f"sink 'default': broker {broker.host}:{broker.port} accepted our messages but never "
        "delivered our own 'online' status back within 2.0 s: the broker's ACL probably denies "
        f"publishing to {STATUS} (an MQTT 3.1.1 broker acknowledges a denied message and drops "
        "it); what it acknowledges now is probably lost: allow this client to publish to and "
        f"subscribe to {PREFIX}/{SITE}/# (docs/mqtt.md, Broker ACL)"
    ]


async def test_an_acl_that_lets_our_messages_through_confirms_delivery(
    mosquitto_factory: MosquittoFactory,
    tmp_path: Path,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ACL docs/mqtt.md recommends for one agent: no warning, nothing unconfirmed."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {PREFIX}/{SITE}/#\n")
    broker = mosquitto_factory(extra_conf=f"acl_file {acl}\n")
    outbox.append([msg("l1", "kpi", n) for n in range(3)])
    sink = MqttSink(config(broker), site=SITE, outbox=outbox)
    async with Subscriber(broker.host, broker.port, f"{PREFIX}/{SITE}/l1/#") as sub:
        async with running(sink):
            await sub.collect(3)
            await until(lambda: sink.delivery_confirmed, 5.0)
        assert not sink.status_echo_missing
    assert sink.unconfirmed_total == 0
    assert not [r for r in caplog.records if "never delivered" in r.getMessage()]


async def test_a_link_closed_right_after_connack_is_named_and_leaves_no_stray_error(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that closes every link right after its CONNACK (a broker or middlebox dropping
    each link): the loss reaches the client while it finishes connecting, before the first
    message was written. The sink names the loss, and nothing is left to be logged at ERROR
    (no unread future, no callback on a closed socket). The peer answers like a broker."""
    connections = 0

    async def accept_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(65536)  # the CONNECT
        writer.write(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK: accepted
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(accept_then_close, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    errors: list[str] = []
    try:
        sink = MqttSink(
            MqttConfig(host="127.0.0.1", port=port, timeout_s=2.0), site=SITE, outbox=outbox
        )
        for _ in range(3):
            with pytest.raises(SinkError) as failed:
                await asyncio.wait_for(sink.run(), 10.0)
            errors.append(str(failed.value))
            gc.collect()  # a dropped future reports its unread error when it is collected
            await asyncio.sleep(0)
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 3
    assert (
        errors
        == [f"connection to broker 127.0.0.1:{port} closed right after the broker accepted it"] * 3
    )
    stray = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not stray, [r.getMessage() for r in stray]


async def test_a_connack_refusal_for_the_will_topic_names_the_acl(outbox: Outbox) -> None:
    """ejabberd refuses a CONNECT whose last will topic its ACL forbids, with MQTT 5's 'Topic
    name invalid' (0x90). A peer that answers every CONNECT that way stands in for it."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the CONNECT
        writer.write(bytes([0x20, 0x03, 0x00, 0x90, 0x00]))  # CONNACK: 0x90, no properties
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        cfg = MqttConfig(host="127.0.0.1", port=port, timeout_s=2.0, protocol=MqttProtocol.V5)
        sink = MqttSink(cfg, site=SITE, outbox=outbox)
        with pytest.raises(BrokerRefusedError) as refused:
            await asyncio.wait_for(sink.run(), 10.0)
    finally:
        server.close()
        await server.wait_closed()
    assert str(refused.value) == (
        f"broker 127.0.0.1:{port} refused the connection: Topic name invalid (reason code 144);"
        f" a broker whose ACL forbids the last will's topic {STATUS} refuses the connection "
        "like this (ejabberd does): allow this client to publish to it"
    )


async def test_a_refused_status_subscription_is_logged_once_with_what_it_costs(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """amqtt's topic ACL answers a denied subscription with SUBACK 0x80 (MQTT 3.1.1): the sink
    says so once (not again on the reconnect), and publishes on: the check is impossible, the
    messages may well arrive."""
    pytest.importorskip("amqtt", reason="amqtt (the 'demo' extra) has the topic ACL plugin")
    broker = Amqtt(tmp_path / "amqtt", subscribe_acl=["elsewhere/#"])
    broker.start(attempts=3)
    try:
        outbox.append([msg("l1", "kpi", n) for n in range(3)])
        sink = MqttSink(config(broker), site=SITE, outbox=outbox)
        task = asyncio.create_task(sink.run())
        await until(lambda: outbox.depth() == 0, 10.0)
        broker.stop()
        with pytest.raises(SinkError):
            await asyncio.wait_for(task, 10.0)
        broker.start(attempts=3)
        outbox.append([msg("l1", "kpi", 3)])
        async with running(sink):
            await until(lambda: outbox.depth() == 0, 10.0)
        assert not sink.status_echo_missing and sink.unconfirmed_total == 0
    finally:
        broker.close()
    refused = [
        r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()
    ]
    assert refused == [
        f"sink 'default': broker {broker.host}:{broker.port} refused the subscription to "
        f"{STATUS} (SUBACK Unspecified error, 0x80): the agent cannot check that the broker "
        f"delivers its messages; its ACL must allow this client to subscribe to {STATUS}"
    ]


async def test_a_link_closed_on_our_first_publish_points_at_the_acl(outbox: Outbox) -> None:
    """aedes closes the connection on a publish its ACL denies, without a word. A peer that
    accepts the CONNECT and closes the link on the first PUBLISH (the `online`) stands in for
    it."""

    async def close_on_publish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the CONNECT
        writer.write(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK: accepted
        await writer.drain()
        await reader.read(65536)  # the PUBLISH of `online`
        writer.transport.abort()

    server = await asyncio.start_server(close_on_publish, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        cfg = MqttConfig(host="127.0.0.1", port=port, timeout_s=2.0)
        sink = MqttSink(cfg, site=SITE, outbox=outbox)
        with pytest.raises(SinkError) as lost:
            await asyncio.wait_for(sink.run(), 10.0)
    finally:
        server.close()
        await server.wait_closed()
    text = str(lost.value)
    assert text.startswith(
        f"connection to broker 127.0.0.1:{port} lost while it had to acknowledge a message on "
        f"{STATUS}: "
    ), text
    assert text.endswith(
        "(a broker may close the connection on a publish its ACL denies, as aedes does: check "
        f"that it lets this client publish to {STATUS})"
    ), text
