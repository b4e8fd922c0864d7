"""The /metrics endpoint over real HTTP(S): TLS, basic auth, scrape-time figures, clean stop."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from helpers.tls import Pki, make_pki

from edge_agent.metrics import Metrics, MetricsServeError, MetricsServer, SinkFigures

Serve = Callable[..., Awaitable[MetricsServer]]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    m.info.labels(version="test", site="plant1").set(1)
    return m


@pytest.fixture
async def serve(metrics: Metrics) -> AsyncIterator[Serve]:
    """Start a server as the supervisor does (a task that listens, then serves until
    cancelled); every one started is stopped at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def start(host: str = "127.0.0.1", port: int = 0, **kwargs: str) -> MetricsServer:
        server = MetricsServer(metrics, host, port, **kwargs)
        task = asyncio.create_task(server.run())
        tasks.append(task)
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait([task, listening], return_when=asyncio.FIRST_COMPLETED, timeout=10)
        listening.cancel()
        if task.done():
            task.result()  # raises what stopped it
        assert server.port is not None
        return server

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def get(
    url: str,
    *,
    ca: Path | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        body: bytes = response.read()
        return body, dict(response.headers)


async def aget(url: str, **kwargs: object) -> bytes:
    """A scrape from another thread: the server runs on this test's event loop."""
    body, _ = await asyncio.to_thread(get, url, **kwargs)  # type: ignore[arg-type]
    return body


async def test_https_with_basic_auth(serve: Serve, pki: Pki) -> None:
    server = await serve(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        username="prom",
        password="s3cret-metrics",
    )
    url = f"https://localhost:{server.port}/metrics"  # the test certificate names localhost
    body = await aget(url, ca=pki.ca_cert, auth=("prom", "s3cret-metrics"))
    assert b'edge_agent_info{site="plant1",version="test"} 1.0' in body

    for wrong in (None, ("prom", "wrong"), ("other", "s3cret-metrics")):
        with pytest.raises(urllib.error.HTTPError) as caught:
            await aget(url, ca=pki.ca_cert, auth=wrong)
        assert caught.value.code == 401
        assert caught.value.headers["WWW-Authenticate"].startswith("Basic")
        caught.value.close()

    # A client that does not trust the CA refuses the server; plain HTTP gets no answer.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        await aget(url, auth=("prom", "s3cret-metrics"))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await aget(f"http://127.0.0.1:{server.port}/metrics", auth=("prom", "s3cret-metrics"))


async def test_plain_http_without_auth_is_unchanged(serve: Serve) -> None:
    server = await serve()
    body, headers = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/metrics")
    assert b"edge_agent_info" in body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


async def test_openmetrics_and_gzip_when_the_scraper_asks(serve: Serve) -> None:
    server = await serve()
    headers = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    body, got = await asyncio.to_thread(
        get, f"http://127.0.0.1:{server.port}/metrics", headers=headers
    )
    assert got["Content-Type"].startswith("application/openmetrics-text")
    assert got["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.rstrip().endswith("# EOF")


async def test_figures_are_read_from_the_components_at_scrape_time(
    serve: Serve, metrics: Metrics
) -> None:
    depth = {"n": 3}
    sources = {"plc1": True, "plc2": False}

    def sinks() -> list[tuple[str, SinkFigures]]:
        figures = SinkFigures(
            connected=True,
            published=41,
            published_unconfirmed=0,
            delivery_unconfirmed=False,
            outbox_messages=depth["n"],
            outbox_bytes=512,
            outbox_oldest_age_s=2.5,
            outbox_writable=True,
            held_in_memory=0,
            lost=1,
            dropped={"kpi": 7},
        )
        return [("plant", figures)]

    metrics.read_sinks(sinks)
    metrics.read_sources(lambda: list(sources.items()))
    server = await serve()
    url = f"http://127.0.0.1:{server.port}/metrics"
    text = (await aget(url)).decode()
    assert 'edge_agent_outbox_messages{sink="plant"} 3.0' in text
    assert 'edge_agent_mqtt_published_total{sink="plant"} 41.0' in text
    assert 'edge_agent_outbox_dropped_total{sink="plant",topic="kpi"} 7.0' in text
    assert 'edge_agent_outbox_lost_total{sink="plant"} 1.0' in text
    assert 'edge_agent_source_up{source="plc1"} 1.0' in text
    assert 'edge_agent_source_up{source="plc2"} 0.0' in text
    # Nothing is copied: the next scrape sees the components as they are then.
    depth["n"] = 0
    del sources["plc2"]
    text = (await aget(url)).decode()
    assert 'edge_agent_outbox_messages{sink="plant"} 0.0' in text
    assert "plc2" not in text
    assert metrics.registry.get_sample_value("edge_agent_outbox_bytes", {"sink": "plant"}) == 512


async def test_the_server_runs_on_the_event_loop_and_stops_with_its_task(
    metrics: Metrics,
) -> None:
    threads = set(threading.enumerate())
    server = MetricsServer(metrics, "127.0.0.1", 0)
    task = asyncio.create_task(server.run())
    async with asyncio.timeout(10):
        await server.listening.wait()
    assert set(threading.enumerate()) == threads  # no thread of its own
    assert b"edge_agent_info" in await aget(f"http://127.0.0.1:{server.port}/metrics")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not server.listening.is_set()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port or 0)) != 0  # the port is closed


async def test_a_port_in_use_is_a_clear_error(serve: Serve) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            MetricsServeError, match=rf"cannot listen on 127.0.0.1:{port} \(prometheus"
        ):
            await serve(port=port)


async def test_an_unusable_key_file_is_a_clear_error_and_binds_nothing(
    serve: Serve, pki: Pki
) -> None:
    with pytest.raises(MetricsServeError, match=r"prometheus\.cert_file, prometheus\.key_file"):
        await serve(cert_file=str(pki.server_cert), key_file=str(pki.ca_cert))
