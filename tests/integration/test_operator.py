"""The operator page (docs/operator.md) against the agent in process, with the simulator as its
PLC and a real Mosquitto: sign-in, the rate limit on wrong PINs, CSRF, the security headers, a
station seeing only its lines, the live board, a stop classified and split in chromium reaching
the broker's kpi reports, and an order set from the page reaching the engine like an MQTT order
command."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from helpers.mosquitto import Mosquitto
from helpers.net import free_port
from helpers.subscriber import Subscriber

from edge_agent.app import Agent
from edge_agent.config.loader import load_config_text
from edge_agent.metrics import Metrics
from edge_agent.operator import server as operator_server
from edge_agent.replay import replay
from edge_agent.sinks.history import export_csv
from simulators.model import LineParams
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

SPEED = 4.0
OPERATOR_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/schemas/operator.schema.json").read_text()
)
PIN_A, PIN_B = "4321", "98765"


def config_text(sim: Simulation, broker_port: int, tmp: Path) -> str:
    (tmp / "pin-a").write_text(PIN_A + "\n")
    (tmp / "pin-b").write_text(PIN_B + "\n")
    ideal_ms = round(1000 / SPEED)
    lines = "".join(
        f"""
  - name: line{n}
    ideal_cycle_time: {ideal_ms}ms
    signals:
      state:
        tag: plc.state{n}
        map: {{1: running, 2: idle, 3: fault, 4: planned_stop, 5: changeover}}
      total_count: {{tag: plc.total{n}, rollover: 65536}}
    stop_reasons:
      - {{name: jam, category: breakdown, label: Jam}}
      - {{name: no_material, category: material, label: No material}}
"""
        for n in (1, 2)
    )
    return f"""
version: 1
site: op
sources:
  - name: plc
    protocol: modbus
    host: 127.0.0.1
    port: {sim.modbus_port}
    poll_interval: 100ms
    timeout: 1s
    tags:
      - {{name: state1, address: 0}}
      - {{name: total1, address: 1}}
      - {{name: state2, address: 100}}
      - {{name: total2, address: 101}}
lines:{lines}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  publish_interval: 500ms
  commands: true
prometheus:
  enabled: false
storage:
  dir: {tmp / "state"}
operator:
  enabled: true
  port: {free_port()}
  stations:
    - {{name: press-a, lines: [line1], pin_file: {tmp / "pin-a"}}}
    - {{name: press-b, lines: [line2], pin_file: {tmp / "pin-b"}}}
"""


class Running:
    """The agent as a task; stops it (and waits) on exit."""

    def __init__(self, text: str) -> None:
        self.agent = Agent(load_config_text(text), metrics=Metrics())
        self.stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Agent:
        self.task = asyncio.create_task(self.agent.run(self.stop))
        async with asyncio.timeout(10.0):
            await self.agent.ready.wait()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        async with asyncio.timeout(20.0):
            assert await self.task == 0


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    # Micro-stops every few seconds of wall time, so that the board sees state changes.
    params = LineParams(mean_time_between_microstops_s=8.0, microstop_duration_s=(3.0, 6.0))
    async with Simulation(
        lines=2, speed=SPEED, opcua_port=None, params=params, ideal_cycle_time_s=1.0
    ) as s:
        yield s


@pytest.fixture
async def long_stop_sim() -> AsyncIterator[Simulation]:
    # Micro-stops of 6-8 s of wall time, so that a whole second inside one can be chosen on
    # the page, and the list of stops stays the same while the test works on a row.
    params = LineParams(
        mean_time_between_microstops_s=8.0,
        microstop_duration_s=(24.0, 32.0),
        mean_time_between_faults_s=math.inf,
        mean_time_between_planned_stops_s=math.inf,
        mean_time_between_changeovers_s=math.inf,
    )
    async with Simulation(
        lines=2, speed=SPEED, opcua_port=None, params=params, ideal_cycle_time_s=1.0
    ) as s:
        yield s


def base_url(agent: Agent) -> str:
    assert agent.operator is not None and agent.operator.port is not None
    return f"http://127.0.0.1:{agent.operator.port}"


async def test_sign_in_rate_limit_csrf_headers_and_station_scope(
    sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    text = config_text(sim, mosquitto.port, tmp_path)
    async with (
        Running(text) as agent,
        Subscriber("127.0.0.1", mosquitto.port, "edge-agent/op/+/cmd/order/reply") as replies,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        url = base_url(agent)
        async with http.get(url + "/") as r:
            assert r.status == 200
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(url + "/api/lines/line1") as r:
            assert r.status == 401
        async with http.get(url + "/api/session") as r:
            assert r.status == 401
            assert (await r.json())["stations"] == ["press-a", "press-b"]
        # Wrong PINs: refused, and after FREE_ATTEMPTS the station is locked for this client
        # (even the right PIN waits).
        for _ in range(operator_server.FREE_ATTEMPTS):
            async with http.post(
                url + "/api/login", json={"station": "press-a", "pin": "0000"}
            ) as r:
                assert r.status == 403
        async with http.post(url + "/api/login", json={"station": "press-a", "pin": PIN_A}) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) >= 1
        # The other station is not locked; its PIN signs in.
        async with http.post(url + "/api/login", json={"station": "press-b", "pin": PIN_B}) as r:
            assert r.status == 200
            session = await r.json()
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert session["station"] == "press-b" and session["lines"] == ["line2"]
        csrf = session["csrf"]
        # A station sees only its own lines.
        async with http.get(url + "/api/lines/line1") as r:
            assert r.status == 404
        async with http.get(url + "/api/lines/line2") as r:
            assert r.status == 200
            assert (await r.json())["line"] == "line2"
        # Writes need the CSRF token; bodies are bounded.
        order = {"order_id": "PO-7", "product": "bracket", "target_quantity": 40}
        async with http.post(url + "/api/lines/line2/order", json=order) as r:
            assert r.status == 403
        big = {"order_id": "x" * (operator_server.MAX_BODY_BYTES + 1), "target_quantity": 1}
        async with http.post(
            url + "/api/lines/line2/order", json=big, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 413
        bad = {"order_id": "PO-7", "target_quantity": 0}
        async with http.post(
            url + "/api/lines/line2/order", json=bad, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 422
            assert (await r.json())["errors"] == ["target_quantity: must be an integer >= 1"]
        async with http.post(
            url + "/api/lines/line2/order", json=order, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200
        # The same command as MQTT's cmd/order: the same reply, naming the station.
        reply = (await replies.wait_for(lambda m: m.json().get("order_id") == "PO-7")).json()
        assert (reply["line"], reply["ok"], reply["request_id"]) == (
            "line2",
            True,
            "operator:press-b",
        )
        assert agent.runner is not None
        assert agent.runner.engines["line2"].state_dict()["order"]["order_id"] == "PO-7"
        async with http.post(
            url + "/api/lines/line2/order", json={"clear": True}, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200
        assert agent.runner.engines["line2"].state_dict()["order"] is None
        # Press-b cannot set line1's order either.
        async with http.post(
            url + "/api/lines/line1/order", json=order, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 404
        assert agent.runner.engines["line1"].state_dict()["order"] is None


async def wait_for_stop(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    """The first stop of line1 that can be classified (the simulator makes one every few s)."""
    async with asyncio.timeout(30.0):
        while True:
            async with http.get(url + "/api/lines/line1/stops") as r:
                assert r.status == 200
                doc = await r.json()
            if doc["stops"]:
                assert [x["name"] for x in doc["reasons"]] == ["jam", "no_material"]
                stop: dict[str, object] = doc["stops"][0]
                return stop
            await asyncio.sleep(0.2)  # polling the page's own API, with the deadline above


async def test_a_classified_stop_shows_in_the_next_kpi_report(
    sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    text = config_text(sim, mosquitto.port, tmp_path)
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        Running(text) as agent,
        Subscriber("127.0.0.1", mosquitto.port, "edge-agent/op/line1/kpi") as kpi,
        Subscriber("127.0.0.1", mosquitto.port, "edge-agent/op/line1/operator") as audit,
        aiohttp.ClientSession(cookie_jar=jar) as http,
    ):
        url = base_url(agent)
        async with http.post(url + "/api/login", json={"station": "press-a", "pin": PIN_A}) as r:
            csrf = (await r.json())["csrf"]
        headers = {"X-CSRF-Token": csrf}
        stop = await wait_for_stop(http, url)
        start, end = float(stop["start"]), float(stop["end"])  # type: ignore[arg-type]
        for bad, error in (
            ({"start": start, "reason": "coffee"}, "reason: not one of this line's stop reasons"),
            ({"start": start - 3600, "reason": "jam"}, "start: no stop of this shift"),
            (
                {"start": start, "reason": "jam", "split_at": end + 60, "reason2": "jam"},
                "split_at: must be inside the stop",
            ),
        ):
            async with http.post(url + "/api/lines/line1/classify", json=bad, headers=headers) as r:
                assert r.status == 422
                assert any(e.startswith(error) for e in (await r.json())["errors"])
        async with http.post(
            url + "/api/lines/line1/classify", json={"start": start, "reason": "jam"}
        ) as r:
            assert r.status == 403  # no CSRF token
        async with http.post(
            url + "/api/lines/line1/classify",
            json={"start": start, "reason": "jam"},
            headers=headers,
        ) as r:
            assert r.status == 200
        report = (await kpi.wait_for(lambda m: "jam" in m.json()["loss_time_by_reason_s"])).json()
        jam_s = report["loss_time_by_reason_s"]["jam"]
        assert 0 < jam_s <= end - start + 1e-3
        assert any(r["reason"] == "jam" for r in report["top_downtime_reasons"])
        # Split in the middle: the rest is waiting for material.
        middle = (start + end) / 2
        async with http.post(
            url + "/api/lines/line1/classify",
            json={"start": start, "reason": "jam", "split_at": middle, "reason2": "no_material"},
            headers=headers,
        ) as r:
            assert r.status == 200
            listed = next(s for s in (await r.json())["stops"]["stops"] if s["start"] == start)
            assert [x["reason"] for x in listed["reasons"]] == ["jam", "no_material"]
        report = (
            await kpi.wait_for(lambda m: "no_material" in m.json()["loss_time_by_reason_s"])
        ).json()
        split = report["loss_time_by_reason_s"]
        assert abs(split["jam"] + split["no_material"] - jam_s) < 0.01
        # Each applied action is published for audit, naming the station.
        events = [m.json() for m in await audit.collect(2, timeout_s=10.0)]
        for event in events:
            jsonschema.validate(event, OPERATOR_SCHEMA)
        assert [(e["station"], e["action"], e["reasons"]) for e in events] == [
            ("press-a", "classify", ["jam"]),
            ("press-a", "classify", ["jam", "no_material"]),
        ]
        assert "split_at" in events[1] and "split_at" not in events[0]
        # Undo: the time is unspecified again.
        async with http.post(
            url + "/api/lines/line1/classify",
            json={"start": start, "reason": None},
            headers=headers,
        ) as r:
            assert r.status == 200
        await kpi.wait_for(
            lambda m: not {"jam", "no_material"} & set(m.json()["loss_time_by_reason_s"])
        )
        # The shift note: bounded, then carried in the kpi reports.
        async with http.post(
            url + "/api/lines/line1/note", json={"note": "x" * 501}, headers=headers
        ) as r:
            assert r.status == 422
        note = "금형 7번 교체 / die 7 changed"
        async with http.post(
            url + "/api/lines/line1/note", json={"note": note}, headers=headers
        ) as r:
            assert r.status == 200
        await kpi.wait_for(lambda m: m.json().get("shift_note") == note)
        event = (await audit.wait_for(lambda m: m.json()["action"] == "note")).json()
        jsonschema.validate(event, OPERATOR_SCHEMA)
        assert (event["station"], event["note"]) == ("press-a", note)


async def test_board_follows_the_line_live(
    sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The event stream carries every state change of the simulated line, each within 1 s of
    the simulator making it (poll 100 ms; the pipeline steps at once on a state change)."""
    text = config_text(sim, mosquitto.port, tmp_path)
    async with (
        Running(text) as agent,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        url = base_url(agent)
        async with http.post(url + "/api/login", json={"station": "press-a", "pin": PIN_A}) as r:
            assert r.status == 200
        model = sim.models[0]
        seen: list[tuple[str, float]] = []
        async with http.get(url + "/api/lines/line1/events") as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            changes = [(model.state.name.lower(), time.monotonic())]

            async def watch_model() -> None:
                while True:
                    await sim.wait_update()
                    if model.state.name.lower() != changes[-1][0]:
                        changes.append((model.state.name.lower(), time.monotonic()))

            watcher = asyncio.create_task(watch_model())
            try:
                async with asyncio.timeout(40.0):
                    async for raw in stream.content:
                        line = raw.decode().strip()
                        if not line.startswith("data: "):
                            continue
                        board = json.loads(line[6:])
                        if seen and board["state"] == seen[-1][0]:
                            continue
                        seen.append((board["state"], time.monotonic()))
                        if len({s for s, _ in seen} & {"running", "idle"}) == 2 and len(seen) >= 3:
                            break
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        states = [s for s, _ in seen]
        assert "idle" in states and "running" in states, states
        # Each board change against the simulator's latest change to that state before it.
        lag_s = [
            at - max(t for st, t in changes if st == s and t <= at)
            for s, at in seen[1:]
            if any(st == s and t <= at for st, t in changes)
        ]
        assert len(lag_s) == len(seen) - 1 and max(lag_s) < 1.0, (lag_s, changes, seen)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "operator"


def _need_chromium() -> None:
    """Skip without Debian's chromium or Python's playwright, except under CI (must fail)."""
    missing = [
        what
        for what, ok in (
            ("/usr/bin/chromium (apt-get install chromium)", CHROMIUM.exists()),
            ("playwright (the test extra)", importlib.util.find_spec("playwright") is not None),
        )
        if not ok
    ]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests need {', '.join(missing)}")
        pytest.skip(f"browser tests need {', '.join(missing)}")


async def test_in_a_real_browser(sim: Simulation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Debian's chromium, headless: a wrong PIN is refused, the right one signs in, the board
    shows the simulator's state changes within 2 s, at 1280x800 and 800x1280; a stop classified
    on the page has its time in the next `kpi` report on the broker; screenshots go to
    test-output/operator/ (docs/operator.md shows them)."""
    _need_chromium()
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    text = config_text(sim, mosquitto.port, tmp_path)
    async with (
        Running(text) as agent,
        Subscriber("127.0.0.1", mosquitto.port, "edge-agent/op/line1/kpi") as kpi,
        async_playwright() as pw,
    ):
        url = base_url(agent)
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            for width, height in ((1280, 800), (800, 1280)):
                context = await browser.new_context(
                    viewport={"width": width, "height": height}, locale="en-US"
                )
                page = await context.new_page()
                # Script errors; a refused request (401, 403) is the page working as meant.
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                await page.goto(url + "/")
                await page.select_option("#station", "press-a")
                await page.fill("#pin", "1111")
                await page.click("#login button[type=submit]")
                # Selectors, not wait_for_function: the page's CSP forbids eval, rightly.
                await page.wait_for_selector("#login-error:not(:empty)")
                assert await page.inner_text("#login-error") == "Wrong PIN."
                await page.fill("#pin", PIN_A)
                await page.click("#login button[type=submit]")
                await page.wait_for_selector("#board:not([hidden])")
                # Only its own line is offered.
                assert await page.eval_on_selector_all(
                    "#line option", "os => os.map(o => o.value)"
                ) == ["line1"]
                # The state shown follows the simulator's, within 2 s of each change.
                model = sim.models[0]
                for _ in range(2):
                    before = model.state
                    async with asyncio.timeout(30.0):
                        while model.state is before:
                            await sim.wait_update()
                    changed = time.monotonic()
                    expected = model.state.name.lower()
                    await page.wait_for_selector(f"#state[data-state={expected}]", timeout=2000)
                    assert time.monotonic() - changed < 2.0
                # The tiles fit the viewport: nothing wider than the page.
                overflow = await page.evaluate(
                    "document.documentElement.scrollWidth - window.innerWidth"
                )
                assert overflow <= 0, f"page wider than {width} px by {overflow} px"
                await page.wait_for_selector('#k-oee:has-text("%")', timeout=5000)
                await page.screenshot(path=str(SHOTS / f"line-board-{width}x{height}.png"))
                # Classify the latest stop as a jam: the row says so.
                row = page.locator("#stops tbody tr").first
                await row.wait_for(timeout=30_000)
                await row.locator("select.r1").select_option("jam")
                await row.locator("button[data-act=set]").click()
                await page.wait_for_selector('#stops-msg:text-is("Saved.")')
                start = float(await row.get_attribute("data-start") or "nan")
                assert agent.runner is not None
                stop = agent.runner.engines["line1"].stops.find(start)
                assert stop is not None and [r for _, r in stop.reasons] == ["jam"]
                # The next kpi report on the broker carries the jam time the engine booked
                # (both viewports' stops, if they are two).
                await jam_reported(kpi, agent, {"jam"})
                await page.locator("#stops-panel").scroll_into_view_if_needed()
                await page.screenshot(
                    path=str(SHOTS / f"classify-{width}x{height}.png"), full_page=True
                )
                assert errors == []
                await context.close()
        finally:
            await browser.close()


async def test_a_split_and_wrong_pins_in_a_real_browser(
    long_stop_sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Debian's chromium, headless: a stop split on the page at a whole second gets both
    reasons, and the next `kpi` report on the broker carries both parts; wrong PINs are refused
    on the page and, after FREE_ATTEMPTS of them, even the right PIN is told to wait (the
    other station is not locked)."""
    _need_chromium()
    from playwright.async_api import async_playwright

    text = config_text(long_stop_sim, mosquitto.port, tmp_path)
    async with (
        Running(text) as agent,
        Subscriber("127.0.0.1", mosquitto.port, "edge-agent/op/line1/kpi") as kpi,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC"
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base_url(agent) + "/")

            async def sign_in(station: str, pin: str) -> int:
                await page.select_option("#station", station)
                await page.fill("#pin", pin)
                async with page.expect_response(lambda r: r.url.endswith("/api/login")) as resp:
                    await page.click("#login button[type=submit]")
                status: int = (await resp.value).status
                return status

            # Split line1's first ended stop at a whole second: jam before, no material after.
            assert await sign_in("press-a", PIN_A) == 200
            await page.wait_for_selector("#board:not([hidden])")
            first = page.locator("#stops tbody tr").first
            await first.wait_for(timeout=40_000)
            start_attr = await first.get_attribute("data-start")
            start = float(start_attr or "nan")
            assert agent.runner is not None
            stop = agent.runner.engines["line1"].stops.find(start)
            assert stop is not None and stop.end is not None and stop.end - start > 2.0
            split_at = math.floor(start) + 1.0  # strictly inside: the stop lasts over 2 s
            row = page.locator(f'#stops tbody tr[data-start="{start_attr}"]')
            await row.locator("select.r1").select_option("jam")
            hhmmss = time.strftime("%H:%M:%S", time.gmtime(split_at))
            await row.locator("input.split-at").fill(hhmmss)
            await row.locator("select.r2").select_option("no_material")
            await row.locator("button[data-act=split]").click()
            await page.wait_for_selector('#stops-msg:text-is("Saved.")')
            assert stop.reasons == [(start, "jam"), (split_at, "no_material")]
            await row.locator('td.reason:text-is("jam / no_material")').wait_for(timeout=2000)
            got = await jam_reported(kpi, agent, {"jam", "no_material"})
            assert got["jam"] == pytest.approx(split_at - start, abs=0.01)
            await context.close()

            # Wrong PINs: refused; after FREE_ATTEMPTS even the right PIN is told to wait.
            context = await browser.new_context(
                viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC"
            )
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base_url(agent) + "/")
            # The page writes its message after the response has arrived: clear it before each
            # attempt and wait for the page's own words.
            clear = "document.getElementById('login-error').textContent = ''"
            for _ in range(operator_server.FREE_ATTEMPTS):
                await page.evaluate(clear)
                assert await sign_in("press-b", "0000") == 403
                await page.wait_for_selector('#login-error:text-is("Wrong PIN.")', timeout=5000)
            await page.evaluate(clear)
            assert await sign_in("press-b", PIN_B) == 429
            await page.wait_for_selector('#login-error:text-matches("^Too many")', timeout=5000)
            locked = await page.inner_text("#login-error")
            wait = re.fullmatch(r"Too many wrong PINs: wait (\d+) s\.", locked)
            assert wait is not None and int(wait[1]) >= 1, locked
            assert await page.is_hidden("#board")
            # The lock is press-b's from this client: press-a still signs in.
            assert await sign_in("press-a", PIN_A) == 200
            await page.wait_for_selector("#board:not([hidden])")
            assert errors == []
            await context.close()
        finally:
            await browser.close()


async def jam_reported(kpi: Subscriber, agent: Agent, names: set[str]) -> dict[str, float]:
    """Wait for a line1 `kpi` report whose time for each of ``names`` is what the engine booked
    to it from the operator's classifications; returns its loss_time_by_reason_s."""
    assert agent.runner is not None
    booked: dict[str, float] = {}
    for stop in agent.runner.engines["line1"].stops.stops:
        for (_, reason), seconds in stop.booked.items():
            booked[reason] = booked.get(reason, 0.0) + seconds
    assert set(booked) == names and all(v > 0 for v in booked.values()), booked

    def carries(m: Any) -> bool:
        got = m.json()["loss_time_by_reason_s"]
        return all(abs(got.get(n, -1.0) - booked[n]) < 0.01 for n in names)

    report = (await kpi.wait_for(carries)).json()
    top = {r["reason"] for r in report["top_downtime_reasons"]}
    assert names <= top, report["top_downtime_reasons"]
    by_reason: dict[str, float] = report["loss_time_by_reason_s"]
    return by_reason


async def test_replay_of_the_history_gives_the_reasons_the_live_agent_reported(
    sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The actions are in the sample history: its export, replayed, books the stop's time to
    the same reasons as the live kpi report did."""
    text = config_text(sim, mosquitto.port, tmp_path)
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        Running(text) as agent,
        Subscriber("127.0.0.1", mosquitto.port, "edge-agent/op/line1/kpi") as kpi,
        aiohttp.ClientSession(cookie_jar=jar) as http,
    ):
        url = base_url(agent)
        async with http.post(url + "/api/login", json={"station": "press-a", "pin": PIN_A}) as r:
            csrf = (await r.json())["csrf"]
        stop = await wait_for_stop(http, url)
        start, end = float(stop["start"]), float(stop["end"])  # type: ignore[arg-type]
        async with http.post(
            url + "/api/lines/line1/classify",
            json={
                "start": start,
                "reason": "no_material",
                "split_at": (start + end) / 2,
                "reason2": "jam",
            },
            headers={"X-CSRF-Token": csrf},
        ) as r:
            assert r.status == 200
        live = (
            await kpi.wait_for(lambda m: "no_material" in m.json()["loss_time_by_reason_s"])
        ).json()["loss_time_by_reason_s"]
    csv = io.StringIO()
    export_csv(tmp_path / "state" / "history.sqlite", csv)
    assert "operator.line1.action" in csv.getvalue()
    csv.seek(0)
    result = replay(load_config_text(text), csv)
    assert result.problems == []
    [line1] = [r for r in result.open if r["line"] == "line1"]
    replayed = line1["loss_time_by_reason_s"]
    assert replayed["no_material"] == pytest.approx(live["no_material"], abs=1e-3)
    assert replayed["jam"] == pytest.approx(live["jam"], abs=1e-3)


async def test_the_page_speaks_korean_to_a_korean_browser(
    sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    _need_chromium()
    from playwright.async_api import async_playwright

    text = config_text(sim, mosquitto.port, tmp_path)
    async with Running(text) as agent, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(
                viewport={"width": 800, "height": 1280}, locale="ko-KR"
            )
            page = await context.new_page()
            await page.goto(base_url(agent) + "/")
            await page.wait_for_selector("html[lang=ko]", state="attached")
            assert await page.inner_text("#login button[type=submit]") == "로그인"
            await page.fill("#pin", "0000")
            await page.click("#login button[type=submit]")
            await page.wait_for_selector("#login-error:not(:empty)")
            assert await page.inner_text("#login-error") == "PIN이 틀렸습니다."
            await page.fill("#pin", PIN_A)
            await page.click("#login button[type=submit]")
            await page.wait_for_selector("#board:not([hidden])")
            assert await page.inner_text("[data-t=availability]") == "가동률"
            await context.close()
        finally:
            await browser.close()
