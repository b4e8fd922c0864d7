"""The operator page's HTTP server (docs/operator.md): an aiohttp server whose :meth:`run` is a
component under the supervisor, like ``/metrics``.

Security. Nothing is readable or writable without a session, and a session needs the station's
PIN (compared in constant time). Wrong PINs are rate-limited per station and client address:
after :data:`FREE_ATTEMPTS` failures each further attempt waits twice as long as the last
(from :data:`LOCK_BASE_S`, at most :data:`LOCK_MAX_S`), and a request inside the lock gets 429
without its PIN even being compared. The session cookie is ``HttpOnly``, ``SameSite=Strict``
(``Secure`` over HTTPS); every POST carries the session's CSRF token in ``X-CSRF-Token``. Every
response carries a strict Content-Security-Policy (scripts, styles and connections from the
page's own origin only; no inline script), ``nosniff``, no referrer and no framing. Request
bodies are limited to :data:`MAX_BODY_BYTES` and read within :data:`BODY_TIMEOUT_S`. A station
sees only its own lines: another line is 404, as if it did not exist.

Actions are inputs like PLC data: an order set here is the very same order command the MQTT
``cmd/order`` topic takes (same validation, same reply on ``cmd/order/reply``, with
``request_id`` ``operator:STATION``), applied by the engine and persisted with its state; the
log names the station.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from edge_agent.engine.build import iso
from edge_agent.engine.reports import OperatorEvent
from edge_agent.engine.stops import OPERATOR_SOURCE
from edge_agent.errors import EdgeAgentError
from edge_agent.http import is_loopback, listening
from edge_agent.model import Quality, Sample
from edge_agent.operator.board import Boards

if TYPE_CHECKING:
    from aiohttp import web

    from edge_agent.config.schema import OperatorConfig
    from edge_agent.engine.line import LineEngine
    from edge_agent.engine.reports import Report

log = logging.getLogger(__name__)

COOKIE = "edge_agent_operator"
MAX_BODY_BYTES = 8 * 1024
BODY_TIMEOUT_S = 5.0
SESSION_IDLE_S = 12 * 3600.0  # a session unused this long is gone (a shift and then some)
MAX_SESSIONS_PER_STATION = 32  # the oldest goes first
FREE_ATTEMPTS = 5
LOCK_BASE_S = 30.0
LOCK_MAX_S = 15 * 60.0
SSE_KEEPALIVE_S = 15.0
PIN_DIGITS = (4, 12)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/strings.json": ("strings.json", "application/json; charset=utf-8"),
}

# (line, command name, payload) -> applied by the pipeline.
Command = Callable[[str, str, bytes], None]
MAX_REASON_CHARS = 64
MAX_NOTE_CHARS = 500


class OperatorServeError(EdgeAgentError):
    """The operator page cannot be served: a PIN file cannot be read or is not a PIN, the
    address is in use, or the certificate cannot be used."""


@dataclass(frozen=True, slots=True)
class Station:
    name: str
    lines: frozenset[str]
    pin: str


@dataclass(slots=True)
class Session:
    station: Station
    csrf: str
    last_used: float


@dataclass(slots=True)
class _Attempts:
    failures: int = 0
    locked_until: float = 0.0
    lock_s: float = 0.0


def read_pin(path: str, where: str) -> str:
    """The PIN in ``path``: 4 to 12 digits. Raises :class:`OperatorServeError` naming the file
    and the key (never the PIN)."""
    from edge_agent.secrets import SecretError, read_secret  # noqa: PLC0415

    try:
        pin = read_secret(path).strip()
    except SecretError as exc:
        raise OperatorServeError(f"operator: {exc} ({where})") from exc
    low, high = PIN_DIGITS
    if not (pin.isascii() and pin.isdigit() and low <= len(pin) <= high):
        raise OperatorServeError(
            f"operator: the PIN in {path} ({where}) must be {low} to {high} digits"
        )
    return pin


class OperatorServer:
    """The operator page over HTTP(S). :meth:`run` listens (``port=0``: a free port, see
    :attr:`port`), sets :attr:`listening`, serves until cancelled, then closes its sockets."""

    def __init__(
        self,
        cfg: OperatorConfig,
        stations: list[Station],
        boards: Boards,
        command: Command,
        *,
        engines: Callable[[], Mapping[str, LineEngine]] = dict,
        deliver: Callable[[list[Sample]], None] = lambda samples: None,
        publish: Callable[[list[Report]], None] = lambda reports: None,
        note: Callable[[str, str | None], None] = lambda line, note: None,
        clear_order: Callable[[str], None] = lambda line: None,
        agent_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``engines`` and ``deliver``: the pipeline's line engines and its sample input (the
        stops to classify, and the operator's actions as samples); ``agent_clock``: the agent's
        time for those samples; ``clock``: for sessions and the rate limit."""
        self._engines = engines
        self._deliver = deliver
        self._publish = publish
        self._note = note
        self._clear_order = clear_order
        self._agent_clock = agent_clock
        self.cfg = cfg
        self.stations = {s.name: s for s in stations}
        self.boards = boards
        self._command = command
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._attempts: dict[tuple[str, str], _Attempts] = {}
        self.port: int | None = None
        self.listening = asyncio.Event()
        self._assets = {
            path: (resources.files(__package__).joinpath("static", name).read_bytes(), ctype)
            for path, (name, ctype) in _STATIC.items()
        }

    @classmethod
    def from_config(
        cls, cfg: OperatorConfig, boards: Boards, command: Command, **kw: Any
    ) -> OperatorServer:
        """The server the ``operator`` section describes; the PIN files are read now."""
        stations = [
            Station(s.name, s.lines, read_pin(s.pin_file, f"operator.stations[{i}].pin_file"))
            for i, s in enumerate(cfg.stations)
        ]
        return cls(cfg, stations, boards, command, **kw)

    @property
    def tls(self) -> bool:
        return self.cfg.cert_file is not None and self.cfg.key_file is not None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.cfg.cert_file), str(self.cfg.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise OperatorServeError(
                f"operator: cannot use certificate {self.cfg.cert_file} with key"
                f" {self.cfg.key_file} (operator.cert_file, operator.key_file): {exc}"
            ) from exc
        return context

    # ------------------------------------------------------------------------------- sessions

    def _session(self, request: web.Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        session = self._sessions.get(token) if token else None
        now = self._clock()
        if session is None or now - session.last_used > SESSION_IDLE_S:
            if token:
                self._sessions.pop(token, None)
            return None
        session.last_used = now
        return session

    def _new_session(self, station: Station) -> tuple[str, Session]:
        mine = [t for t, s in self._sessions.items() if s.station.name == station.name]
        for token in mine[: max(0, len(mine) - MAX_SESSIONS_PER_STATION + 1)]:
            del self._sessions[token]  # dicts keep insertion order: the oldest first
        token = secrets.token_urlsafe(32)
        session = Session(station, secrets.token_urlsafe(32), self._clock())
        self._sessions[token] = session
        return token, session

    # ------------------------------------------------------------------------------- handlers

    @staticmethod
    def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        from aiohttp import web  # noqa: PLC0415

        return web.json_response(
            doc, status=status, headers=headers, dumps=lambda d: json.dumps(d, ensure_ascii=False)
        )

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        from aiohttp import web  # noqa: PLC0415

        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_BODY_BYTES, actual_size=request.content_length
            )
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await request.read()  # aiohttp refuses more than client_max_size
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web  # noqa: PLC0415

        body, ctype = self._assets[request.path]
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _login(self, request: web.Request) -> web.StreamResponse:
        doc = await self._body(request)
        if doc is None:
            return self._json({"error": "bad_request"}, 400)
        name, pin = doc.get("station"), doc.get("pin")
        if not isinstance(name, str) or not isinstance(pin, str) or len(pin) > 64:
            return self._json({"error": "bad_request"}, 400)
        client = request.remote or "?"
        key = (name, client)
        now = self._clock()
        attempts = self._attempts.get(key)
        if attempts is not None and now < attempts.locked_until:
            wait_s = attempts.locked_until - now
            return self._json(
                {"error": "locked", "retry_after_s": round(wait_s)},
                429,
                {"Retry-After": str(max(1, round(wait_s)))},
            )
        station = self.stations.get(name)
        # Compared even for an unknown station, so that the time does not tell names apart.
        expected = station.pin if station is not None else "\0" * 12
        if station is None or not hmac.compare_digest(pin.encode(), expected.encode()):
            a = self._attempts.setdefault(key, _Attempts())
            a.failures += 1
            if a.failures >= FREE_ATTEMPTS:
                a.lock_s = min(LOCK_MAX_S, a.lock_s * 2 if a.lock_s else LOCK_BASE_S)
                a.locked_until = now + a.lock_s
                log.warning(
                    "operator: %d wrong PINs for station %r from %s; next attempt in %.0f s",
                    a.failures,
                    name[:64],
                    client,
                    a.lock_s,
                )
            if len(self._attempts) > 10_000:  # bounded: forget the oldest
                self._attempts.pop(next(iter(self._attempts)))
            return self._json({"error": "wrong_pin"}, 403)
        self._attempts.pop(key, None)
        token, session = self._new_session(station)
        log.info("operator: station '%s' signed in from %s", station.name, client)
        response = self._json(self._session_doc(session))
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=self.tls,
            path="/",
            max_age=int(SESSION_IDLE_S),
        )
        return response

    def _session_doc(self, session: Session) -> dict[str, Any]:
        return {
            "station": session.station.name,
            "lines": sorted(session.station.lines),
            "csrf": session.csrf,
            "language": str(self.cfg.language),
        }

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return self._json(
                {
                    "error": "signed_out",
                    "stations": sorted(self.stations),
                    "language": str(self.cfg.language),
                },
                401,
            )
        return self._json(self._session_doc(session))

    def _writer(self, request: web.Request) -> Session | web.Response:
        """The session of a POST whose CSRF token matches, else the refusal."""
        session = self._session(request)
        if session is None:
            return self._json({"error": "signed_out"}, 401)
        given = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            return self._json({"error": "csrf"}, 403)
        return session

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session = self._writer(request)
        if not isinstance(session, Session):
            return session
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = self._json({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    def _line(self, session: Session, request: web.Request) -> str | None:
        line = request.match_info.get("line") or request.query.get("line", "")
        return line if line in session.station.lines and line in self.boards.lines else None

    async def _board(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return self._json({"error": "signed_out"}, 401)
        line = self._line(session, request)
        if line is None:
            return self._json({"error": "unknown_line"}, 404)
        return self._json(self.boards.board(line))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the line's board now and at every change (``board``), and a
        comment line every :data:`SSE_KEEPALIVE_S` so proxies keep the stream open."""
        from aiohttp import web  # noqa: PLC0415

        session = self._session(request)
        if session is None:
            return self._json({"error": "signed_out"}, 401)
        line = self._line(session, request)
        if line is None:
            return self._json({"error": "unknown_line"}, 404)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the page went away: nothing to say
            await self._stream(request, response, line)
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, line: str) -> None:
        last: dict[str, Any] | None = None
        while True:
            change = self.boards.next_change()
            board = self.boards.board(line)
            if board != last:
                data = json.dumps(board, ensure_ascii=False, separators=(",", ":"))
                await response.write(f"event: board\ndata: {data}\n\n".encode())
                last = board
            try:
                async with asyncio.timeout(SSE_KEEPALIVE_S):
                    await change.wait()
            except TimeoutError:
                await response.write(b": keepalive\n\n")
            if self._session(request) is None:  # signed out elsewhere, or expired
                return

    async def _order(self, request: web.Request) -> web.StreamResponse:
        session = self._writer(request)
        if not isinstance(session, Session):
            return session
        line = self._line(session, request)
        if line is None:
            return self._json({"error": "unknown_line"}, 404)
        doc = await self._body(request)
        if doc is None:
            return self._json({"error": "bad_request", "errors": ["not a JSON object"]}, 400)
        from edge_agent.engine.orders import validate_order_command  # noqa: PLC0415

        if doc == {"clear": True}:
            return self._order_cleared(session, line)
        command = {**doc, "request_id": f"operator:{session.station.name}"}
        errors = validate_order_command(command)
        if errors:
            return self._json({"error": "invalid", "errors": errors}, 422)
        self._command(line, "order", json.dumps(command).encode())
        self._audit(session, line, "order", order_id=command["order_id"])
        log.info(
            "operator: station '%s' set order %r on line '%s'",
            session.station.name,
            command["order_id"],
            line,
            extra={"line": line},
        )
        return self._json({"ok": True})

    def _stops_doc(self, line: str) -> dict[str, Any] | None:
        engine = self._engines().get(line)
        if engine is None:
            return None
        reasons = [
            {"code": i, "name": r.name, "label": r.label or r.name, "category": str(r.category)}
            for i, r in enumerate(engine.cfg.stop_reasons, start=1)
        ]
        stops = [
            {
                "start": stop.start,
                "end": stop.end,
                "length_s": round(stop.end - stop.start, 3),
                "state": stop.state,
                "reasons": [{"from": t, "reason": r} for t, r in stop.reasons],
            }
            for stop in engine.stops.stops
            if stop.end is not None and stop.pieces
        ]
        return {"line": line, "reasons": reasons, "stops": stops}

    async def _stops(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return self._json({"error": "signed_out"}, 401)
        line = self._line(session, request)
        doc = self._stops_doc(line) if line is not None else None
        if line is None or doc is None:
            return self._json({"error": "unknown_line"}, 404)
        return self._json(doc)

    async def _classify(self, request: web.Request) -> web.StreamResponse:
        """``{"start": T, "reason": NAME | null, "split_at": T2, "reason2": NAME}``: the stop
        that started at ``T`` gets ``reason`` (``null``: undo), or with ``split_at`` the part
        from ``T2`` gets ``reason2``. Applied as operator samples (recorded in the history)."""
        session = self._writer(request)
        if not isinstance(session, Session):
            return session
        line = self._line(session, request)
        engine = self._engines().get(line) if line is not None else None
        if line is None or engine is None:
            return self._json({"error": "unknown_line"}, 404)
        doc = await self._body(request)
        errors: list[str] = []
        names = [r.name for r in engine.cfg.stop_reasons]

        def code(key: str, *, required: bool) -> int:
            value = doc.get(key) if doc is not None else None
            if value is None and not required:
                return 0
            if not isinstance(value, str) or len(value) > MAX_REASON_CHARS or value not in names:
                errors.append(f"{key}: not one of this line's stop reasons")
                return 0
            return names.index(value) + 1

        def number(key: str) -> float | None:
            value = doc.get(key) if doc is not None else None
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                errors.append(f"{key}: must be a time in POSIX seconds")
                return None
            return float(value)

        if doc is None:
            return self._json({"error": "invalid", "errors": ["not a JSON object"]}, 422)
        start = number("start")
        undo = doc.get("reason") is None
        first = 0 if undo else code("reason", required=True)
        split_at = number("split_at")
        second = code("reason2", required=split_at is not None) if split_at is not None else 0
        stop = engine.stops.find(start) if start is not None else None
        if stop is None or stop.end is None or not stop.pieces:
            errors.append("start: no stop of this shift to classify starts then")
        elif split_at is not None and not stop.start < split_at < stop.end:
            errors.append("split_at: must be inside the stop")
        if errors or stop is None or start is None:
            return self._json({"error": "invalid", "errors": errors}, 422)
        now = self._agent_clock()
        values = {
            "stop": stop.start,
            "split": split_at or 0.0,
            "reason2": second,
            "reason": first,
            "action": engine.stops.seq + 1,
        }
        self._deliver(
            [
                Sample(OPERATOR_SOURCE, f"{line}.{tag}", value, Quality.GOOD, None, now)
                for tag, value in values.items()
            ]
        )
        given = [r for _, r in stop.reasons]
        applied = (stop.reasons == []) if undo else bool(stop.reasons)
        if not applied:  # the engine refused it (its notice says why in the log)
            return self._json({"error": "invalid", "errors": ["not applied"]}, 422)
        tz = engine.calendar.tz
        self._audit(
            session,
            line,
            "unclassify" if undo else "classify",
            now=now,
            stop_start=iso(stop.start, tz),
            reasons=tuple(given),
            split_at=iso(split_at, tz) if split_at is not None else None,
        )
        log.info(
            "operator: station '%s' %s the stop at %s on line '%s'%s",
            session.station.name,
            "unclassified" if undo else "classified",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stop.start)),
            line,
            f" as {' then '.join(given)}" if given else "",
            extra={"line": line},
        )
        return self._json({"ok": True, "stops": self._stops_doc(line)})

    def _audit(
        self, session: Session, line: str, action: str, *, now: float | None = None, **fields: Any
    ) -> None:
        """Publish one applied action as an audit event (topic ``operator``), stamped ``now``
        (default: the agent's clock) in the line's time zone."""
        engine = self._engines().get(line)
        if engine is None:
            return
        t = self._agent_clock() if now is None else now
        event = OperatorEvent(
            site=engine.site,
            line=line,
            ts=iso(t, engine.calendar.tz),
            station=session.station.name,
            action=action,
            **fields,
        )
        self._publish([event])

    def _order_cleared(self, session: Session, line: str) -> web.StreamResponse:
        self._clear_order(line)
        self._audit(session, line, "order_cleared")
        log.info(
            "operator: station '%s' cleared the order on line '%s'",
            session.station.name,
            line,
            extra={"line": line},
        )
        return self._json({"ok": True})

    async def _shift_note(self, request: web.Request) -> web.StreamResponse:
        """``{"note": TEXT}``: the note on the line's open shift (empty or null: none)."""
        session = self._writer(request)
        if not isinstance(session, Session):
            return session
        line = self._line(session, request)
        engine = self._engines().get(line) if line is not None else None
        if line is None or engine is None:
            return self._json({"error": "unknown_line"}, 404)
        doc = await self._body(request)
        note = doc.get("note") if doc is not None else None
        errors = []
        if note is not None and not isinstance(note, str):
            errors.append("note: must be text or null")
        elif note is not None:
            note = note.strip()
            if len(note) > MAX_NOTE_CHARS:
                errors.append(f"note: at most {MAX_NOTE_CHARS} characters")
            elif any(ord(c) < 32 and c not in "\n\t" for c in note):
                errors.append("note: control characters are not allowed")
        window = engine.window
        if window is None or window.kind != "shift":
            errors.append("no shift is open on this line")
        if errors:
            return self._json({"error": "invalid", "errors": errors}, 422)
        self._note(line, note or None)
        self._audit(session, line, "note", note=note or "")
        log.info(
            "operator: station '%s' %s the shift note on line '%s'",
            session.station.name,
            "set" if note else "removed",
            line,
            extra={"line": line},
        )
        return self._json({"ok": True, "note": note or None})

    # ----------------------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        from aiohttp import web  # noqa: PLC0415

        @web.middleware
        async def headers(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # 404, 405, 413, ...: the same headers
                _secure(exc.headers)
                raise
            except TimeoutError:
                response = web.Response(status=408, text="request body too slow\n")
            _secure(response.headers)
            return response

        app = web.Application(middlewares=[headers], client_max_size=MAX_BODY_BYTES)
        for path in self._assets:
            app.router.add_get(path, self._asset)
        app.router.add_get("/api/session", self._whoami)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_get("/api/lines/{line}", self._board)
        app.router.add_get("/api/lines/{line}/events", self._events)
        app.router.add_post("/api/lines/{line}/order", self._order)
        app.router.add_get("/api/lines/{line}/stops", self._stops)
        app.router.add_post("/api/lines/{line}/classify", self._classify)
        app.router.add_post("/api/lines/{line}/note", self._shift_note)
        return app

    async def run(self) -> None:
        from aiohttp import web  # noqa: PLC0415

        context = self._ssl_context()
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            keepalive_timeout=30.0,
            max_line_size=8190,
            max_field_size=8190,
        )
        keys = "operator.host, operator.port"
        async with listening(
            runner,
            self.cfg.host,
            self.cfg.port,
            context,
            what="operator",
            keys=keys,
            error=OperatorServeError,
        ) as port:
            self.port = port
            scheme = "https" if context is not None else "http"
            log.info(
                "operator page on %s://%s:%d/ (%d station(s))",
                *(scheme, self.cfg.host, self.port, len(self.stations)),
            )
            if context is None and not is_loopback(self.cfg.host):
                log.warning(
                    "operator page without TLS: PINs cross the plant network in clear"
                    " (operator.cert_file, operator.key_file)"
                )
            self.listening.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                self.listening.clear()


def _secure(headers: MutableMapping[str, str]) -> None:
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers.setdefault("Cache-Control", "no-store")
