"""The /metrics endpoint over real HTTP(S): TLS and basic auth."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tls import Pki, make_pki

from edge_agent.sinks.prometheus import Metrics


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    m.info.labels(version="test", site="plant1").set(1)
    yield m
    m.stop_serving()


def get(url: str, *, ca: Path | None = None, auth: tuple[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        body: bytes = response.read()
        return body


def test_https_with_basic_auth(metrics: Metrics, pki: Pki) -> None:
    port = metrics.serve(
        "127.0.0.1",
        0,
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        username="prom",
        password="s3cret-metrics",
    )
    url = f"https://localhost:{port}/metrics"  # the test server certificate names localhost
    body = get(url, ca=pki.ca_cert, auth=("prom", "s3cret-metrics"))
    assert b'edge_agent_info{site="plant1",version="test"} 1.0' in body

    for wrong in (None, ("prom", "wrong"), ("other", "s3cret-metrics")):
        with pytest.raises(urllib.error.HTTPError) as caught:
            get(url, ca=pki.ca_cert, auth=wrong)
        assert caught.value.code == 401
        assert caught.value.headers["WWW-Authenticate"].startswith("Basic")
        caught.value.close()

    # A client that does not trust the CA refuses the server; plain HTTP gets no answer.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(url, auth=("prom", "s3cret-metrics"))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(f"http://127.0.0.1:{port}/metrics", auth=("prom", "s3cret-metrics"))


def test_plain_http_without_auth_is_unchanged(metrics: Metrics) -> None:
    port = metrics.serve("127.0.0.1", 0)
    assert b"edge_agent_info" in get(f"http://127.0.0.1:{port}/metrics")


def test_an_unusable_key_file_fails_serve_and_frees_the_port(metrics: Metrics, pki: Pki) -> None:
    with pytest.raises((OSError, ssl.SSLError)):
        metrics.serve("127.0.0.1", 0, cert_file=str(pki.server_cert), key_file=str(pki.ca_cert))
