"""``edge-agent watch`` against a real Mosquitto, fed contract-shaped messages from two sites."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest
from helpers.contract import contract

from edge_agent.watch import FleetView, render_fleet

PREFIX = "scm/v1"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def kpi(site: str, line: str, seq: int, ts: float, **values: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "edge-agent/kpi/1",
        "site": site,
        "line": line,
        "window": {
            "kind": "shift",
            "name": "day",
            "start": "2025-03-04T06:00:00+00:00",
            "end": "2025-03-04T14:00:00+00:00",
        },
        "ts": _iso(ts),
        "seq": seq,
        "state": "running",
        "convention": "iso22400:planned=planned_stop",
        "availability": 0.9,
        "performance": 0.95,
        "quality": 0.98,
        "oee": 0.8379,
        "total_count": 1000,
        "good_count": 980,
        "reject_count": 20,
        "throughput_good_per_h": 2940.0,
        "throughput_total_per_h": 3000.0,
        "ideal_cycle_time_s": 1.0,
        "elapsed_s": 1200.0,
        "planned_time_s": 1200.0,
        "run_time_s": 1080.0,
        "unknown_time_s": 0.0,
        "planned_stop_s": 0.0,
        "loss_time_s": {
            "idle": 120.0,
            "fault": 0.0,
            "changeover": 0.0,
            "starved": 0.0,
            "blocked": 0.0,
            "planned_stop": 0.0,
        },
        "loss_time_by_reason_s": {"unspecified": 120.0},
        "planned_stop_by_cause_s": {"off_shift": 0.0, "break": 0.0, "maintenance": 0.0},
        "micro_stop_count": 0,
        "micro_stop_time_s": 0.0,
        "net_run_time_s": 1000.0,
        "fully_productive_time_s": 980.0,
        "products": [],
        "data_coverage": 1.0,
        "warnings": [],
    }
    doc.update(values)
    return doc


def state(site: str, line: str, seq: int, ts: float, *, new: str, old: str) -> dict[str, Any]:
    return {
        "schema": "edge-agent/state/1",
        "site": site,
        "line": line,
        "ts": _iso(ts),
        "seq": seq,
        "state": new,
        "previous_state": old,
        "since": _iso(ts),
    }


def status(site: str, value: str, ts: float) -> dict[str, Any]:
    return {"schema": "edge-agent/status/1", "site": site, "status": value, "ts": _iso(ts)}


async def publish(host: str, port: int, messages: list[tuple[str, dict[str, Any], bool]]) -> None:
    api = contract()
    async with aiomqtt.Client(host, port, identifier="test-watch-publisher", timeout=5) as client:
        for topic, payload, retain in messages:
            api.validate(topic, payload)  # the test speaks the contract too
            await client.publish(topic, json.dumps(payload).encode(), qos=1, retain=retain)


async def run_watch(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """Table rows by (site, line); the header row is checked on the way."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["SITE", "LINE", "AGENT"]
    )
    return {(r.split()[0], r.split()[1]): r.split() for r in lines[header + 1 :]}


async def test_watch_once_shows_two_sites_with_stale_offline_and_gaps(mosquitto: Any) -> None:
    now = time.time()
    hour_ago = now - 3600
    await publish(
        mosquitto.host,
        mosquitto.port,
        [
            # busan: online, two fresh lines; line1 lost seq 11 and 12.
            (f"{PREFIX}/busan/status", status("busan", "online", now), True),
            (f"{PREFIX}/busan/line1/kpi", kpi("busan", "line1", 10, now), False),
            (f"{PREFIX}/busan/line1/kpi", kpi("busan", "line1", 13, now), True),
            (
                f"{PREFIX}/busan/line2/state",
                state("busan", "line2", 7, now, new="fault", old="running"),
                True,
            ),
            (
                f"{PREFIX}/busan/line2/kpi",
                kpi("busan", "line2", 8, now, state="fault", oee=None, availability=None),
                True,
            ),
            # ulsan: the agent died an hour ago; its retained kpi is left over.
            (f"{PREFIX}/ulsan/press/kpi", kpi("ulsan", "press", 500, hour_ago), True),
            (f"{PREFIX}/ulsan/status", status("ulsan", "offline", hour_ago), True),
        ],
    )
    code, out, err = await run_watch(
        "--once", "--host", mosquitto.host, "--port", str(mosquitto.port), "--prefix", PREFIX
    )
    assert code == 0, err
    table = rows(out)
    assert sorted(table) == [("busan", "line1"), ("busan", "line2"), ("ulsan", "press")], out
    # Retained messages only: busan/line1 shows seq 13 (the live seq 10 was not retained).
    line1 = table["busan", "line1"]
    assert line1[2:8] == ["online", "running", "83.8%", "90.0%", "95.0%", "98.0%"], out
    # GOOD/H, KNOWN/H (not in these payloads, as from an agent before that field), TOTAL/H.
    assert line1[8:11] == ["2940", "-", "3000"]
    assert "STALE" not in line1 and "OFFLINE" not in line1
    line2 = table["busan", "line2"]
    assert line2[3:5] == ["fault", "-"], out
    press = table["ulsan", "press"]
    assert press[2] == "offline" and press[-1] == "OFFLINE,STALE", out
    assert press[-3] == "60m", out  # last seen: the payload's ts, not the retained delivery

    # --site filters.
    code, out, err = await run_watch(
        "--once", "--port", str(mosquitto.port), "--prefix", PREFIX, "--site", "ulsan"
    )
    assert code == 0, err
    assert sorted(rows(out)) == [("ulsan", "press")]


async def test_watch_counts_seq_gaps_live_and_marks_stale(mosquitto: Any) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "watch",
        "--port",
        str(mosquitto.port),
        "--prefix",
        PREFIX,
        "--duration",
        "3",
        "--stale-after",
        "1",
        "--refresh",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        # The first table is printed once subscribed (empty); then publish.
        async with asyncio.timeout(20):
            assert b"SITE" in await proc.stdout.readuntil(b"SITE")
        now = time.time()
        await publish(
            mosquitto.host,
            mosquitto.port,
            [
                (f"{PREFIX}/busan/line1/kpi", kpi("busan", "line1", 20, now), False),
                (
                    f"{PREFIX}/busan/line1/state",
                    state("busan", "line1", 21, now, new="idle", old="running"),
                    True,
                ),
                (f"{PREFIX}/busan/line1/kpi", kpi("busan", "line1", 25, now, state="idle"), False),
                (f"{PREFIX}/gimhae/cell1/kpi", kpi("gimhae", "cell1", 3, now), False),
            ],
        )
        async with asyncio.timeout(30):
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = rest.decode()
    final = rows(text[text.rindex("SITE") :])
    line1 = final["busan", "line1"]
    assert line1[3] == "idle" and line1[-2:] == ["3", "STALE"], text  # seq 22..24 lost
    # Fresh rows were not stale while they were fresh: some table showed busan/line1 unmarked.
    fresh = [r for r in text.splitlines() if r.startswith("busan") and "STALE" not in r]
    assert fresh, text
    assert final["gimhae", "cell1"][2] == "?"  # no status seen for that site


def test_fleet_view_marks_stale_by_age_and_ignores_other_prefixes() -> None:
    view = FleetView(prefix="p")
    now = 1_000_000.0
    payload = json.dumps(kpi("s1", "l1", 1, now)).encode()
    view.receive("p/s1/l1/kpi", payload, now=now, now_monotonic=0.0, retained=False)
    view.receive("q/s2/l1/kpi", payload, now=now, now_monotonic=0.0, retained=False)
    view.receive(
        "p/s3/status",
        json.dumps(status("s3", "online", now)).encode(),
        now=now,
        now_monotonic=0.0,
        retained=True,
    )
    assert sorted(view.sites) == ["s1", "s3"]
    fresh = render_fleet(view, now + 5, stale_after_s=15)
    late = render_fleet(view, now + 16, stale_after_s=15)
    assert fresh[1].split()[:2] == ["s1", "l1"] and fresh[1].split()[-1] == "0"
    assert late[1].split()[-1] == "STALE"
    assert late[2].split()[:3] == ["s3", "-", "online"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--password-file", "/nonexistent"], "--password-file needs --username"),
        (["--stale-after", "0"], "--stale-after must be > 0"),
        (["--key-file", "k.pem"], "--key-file needs --cert-file"),
    ],
)
async def test_watch_rejects_bad_options(args: list[str], message: str) -> None:
    code, _, err = await run_watch("--once", *args)
    assert code == 64 and message in err


async def test_watch_unreachable_broker_exits_69() -> None:
    from helpers.net import free_port

    code, _, err = await run_watch("--once", "--port", str(free_port()))
    assert code == 69 and "broker 127.0.0.1:" in err


async def test_watch_plain_output_names_its_time_zone(mosquitto: Any) -> None:
    # UTC: the sites on a broker may lie in several zones, and the agents' status is in UTC.
    code, out, err = await run_watch(
        "--port", str(mosquitto.port), "--duration", "1.5", "--refresh", "0.5"
    )
    assert code == 0, err
    stamps = re.findall(r"^(\d\d):(\d\d):\d\d UTC edge-agent watch: ", out, re.M)
    assert stamps, out
    now = datetime.now(UTC)
    assert all((now.hour * 60 + now.minute - int(h) * 60 - int(m)) % 1440 <= 2 for h, m in stamps)
