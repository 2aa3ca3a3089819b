"""The local control and event endpoint: HTTP on 127.0.0.1 with a bearer token.

Endpoints (every request needs ``Authorization: Bearer <token>``; 401 without):

- ``GET /status``: the line's counters, the state of camera, model, outputs
  (PLC), records and archive, and the active alarms, as JSON.
- ``GET /events``: a server-sent-event stream (``text/event-stream``) of line
  events: ``verdict`` (frame id, part id, verdict, score, defects, latency;
  for NG verdicts and every `line.display_every_n`-th one also a downsampled
  frame and heatmap as base64 JPEG: ``image_jpeg_b64``, ``heatmap_jpeg_b64``),
  ``state`` (running/paused, bundle, threshold), ``alarm``, and ``gap`` when
  this client fell so far behind that events left the ring (the records keep
  every verdict). A client more than `control.lag_events` events behind gets
  its events without images (``display_dropped: true``) so it can catch up;
  the line never waits for a client. ``Last-Event-ID`` resumes a stream.
- ``POST /pause``, ``POST /resume``: body ``{"user": ..., "role": ...}`` (optional).
- ``POST /threshold``: ``{"image_threshold": 1.2, "user": ...}``, in memory.
- ``POST /bundle``: ``{"path": "/var/lib/aoi/bundles/b2", "user": ...}``: loads
  and warms up the bundle while the line keeps running, then swaps it in.
- ``POST /acknowledge``: ``{"source": "camera", "user": ...}`` (no source: every
  alarm): acknowledges the alarms in the records, each audit-logged.

Every POST is audit-logged in the records (`Records.record_action`, by the
line) with the user and role the client names: the token proves the client
may act, the user says who did.

The token comes from `control.token`, or from `control.token_file` (relative
to `data_dir`), which is created with mode 0600 holding a random token when
missing. The server binds to loopback only unless `control.allow_remote` is
set, and then warns: the token would cross the network in the clear.

The stdlib `ThreadingHTTPServer` serves each request on its own thread;
`stop()` ends the event streams within half a second and joins every thread.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import secrets
import stat
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from appliance.config import ControlSettings, is_loopback
from appliance.errors import ConfigError
from drivers.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.line import Line, LineEvent

log = logging.getLogger(__name__)

_MAX_BODY_BYTES = 64 * 1024
_POLL_S = 0.5  # how often an event stream checks for a stop
_SOCKET_TIMEOUT_S = 10.0  # a client that neither sends nor reads for this long is dropped


def resolve_token(settings: ControlSettings, *, data_dir: Path) -> str:
    """The bearer token: `settings.token`, or the token file (created with mode 0600 when missing)."""
    if settings.token:
        return settings.token
    path = settings.token_file if settings.token_file.is_absolute() else data_dir / settings.token_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise ConfigError(f"control token file {path} cannot be created ({exc}); check data_dir") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    log.info("control token written to %s (mode 0600)", path)
    return token


def _read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"control token file {path} cannot be read ({exc}); check its permissions") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("control token file %s is readable by others; run: chmod 600 %s", path, path)
    if len(token) < 16:
        raise ConfigError(f"control token file {path} holds fewer than 16 characters; delete it to make one")
    return token


def _sse(kind: str, data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    text = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {text}\n\n".encode()


def _json_safe(value: Any) -> Any:
    """NaN and infinities (not JSON) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class _Server(ThreadingHTTPServer):
    # Request threads are joined on close, so no stream outlives stop().
    daemon_threads = False
    block_on_close = True
    control: ControlServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _SOCKET_TIMEOUT_S
    server_version = "aoi-control/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control %s: %s", self.client_address[0], format % args)

    # ------------------------------------------------------------------ plumbing

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(_json_safe(body), default=str, allow_nan=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if code == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="aoi"')
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        expected = self.server.control.token
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected.encode()):
            return True
        self.server.control.count("unauthorised")
        self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
        return False

    def _body(self) -> dict[str, Any] | None:
        length_text = self.headers.get("Content-Length", "0") or "0"
        try:
            length = int(length_text)
        except ValueError:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "Content-Length is not a number"})
            return None
        if length > _MAX_BODY_BYTES:
            self._send_json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {_MAX_BODY_BYTES} bytes"}
            )
            return None
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
            return None
        if not isinstance(body, dict):
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"})
            return None
        return body

    @staticmethod
    def _who(body: dict[str, Any]) -> tuple[str, str]:
        user = str(body.get("user") or "control")[:64]
        role = str(body.get("role") or "operator")[:32]
        return user, role

    # ------------------------------------------------------------------ requests

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/status", "/events"):
            self._not_found(path)
            return
        if not self._authorised():
            return
        if path == "/status":
            self._send_json(HTTPStatus.OK, self.server.control.status())
        else:
            self._events()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        actions = {
            "/pause": self._pause,
            "/resume": self._resume,
            "/threshold": self._threshold,
            "/bundle": self._bundle,
            "/acknowledge": self._acknowledge,
        }
        if path not in actions:
            self._not_found(path)
            return
        if not self._authorised():
            return
        body = self._body()
        if body is None:
            return
        try:
            code, answer = actions[path](body)
        except ApplianceError as exc:
            code, answer = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except Exception as exc:  # a bug must answer, not hang the client
            log.exception("control %s failed", path)
            code, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        self._send_json(code, answer)

    def _not_found(self, path: str) -> None:
        known = ("/status", "/events", "/pause", "/resume", "/threshold", "/bundle", "/acknowledge")
        self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {path}", "endpoints": list(known)})

    def _pause(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        user, role = self._who(body)
        self.server.control.line.pause(user=user, role=role)
        return HTTPStatus.OK, {"paused": True}

    def _resume(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        user, role = self._who(body)
        self.server.control.line.resume(user=user, role=role)
        return HTTPStatus.OK, {"paused": False}

    def _threshold(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        value = body.get("image_threshold")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return HTTPStatus.BAD_REQUEST, {
                "error": "image_threshold must be a number (calibrated score units)"
            }
        user, role = self._who(body)
        previous = self.server.control.line.set_threshold(float(value), user=user, role=role)
        return HTTPStatus.OK, {"image_threshold": float(value), "previous": previous}

    def _bundle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = body.get("path")
        if not isinstance(path, str) or not path:
            return HTTPStatus.BAD_REQUEST, {"error": "path must name a bundle directory"}
        user, role = self._who(body)
        bundle_id = self.server.control.line.switch_bundle(Path(path), user=user, role=role)
        return HTTPStatus.OK, {"bundle_id": bundle_id}

    def _acknowledge(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        source = body.get("source")
        if source is not None and (not isinstance(source, str) or not source):
            return HTTPStatus.BAD_REQUEST, {
                "error": "source must name an alarm source, or be left out for all"
            }
        user, role = self._who(body)
        return HTTPStatus.OK, {
            "acknowledged": self.server.control.line.acknowledge_alarms(source, user=user, role=role)
        }

    def _events(self) -> None:
        control = self.server.control
        if not control.acquire_client():
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many event-stream clients"})
            return
        hub = control.line.events
        cursor = hub.subscribe()
        try:
            resume = self.headers.get("Last-Event-ID", "")
            if resume.isdigit() and int(resume) <= cursor:
                cursor = int(resume)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.write(b": aoi line events\nretry: 2000\n\n")
            self.wfile.flush()
            self._stream(cursor)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("event client %s went away", self.client_address[0])
        finally:
            hub.unsubscribe()
            control.release_client()

    def _stream(self, cursor: int) -> None:
        control = self.server.control
        hub = control.line.events
        lag = control.settings.lag_events
        last_write = time.monotonic()
        while not control.stopping:
            events, cursor, missed = hub.read(cursor, timeout_s=_POLL_S)
            chunks: list[bytes] = []
            if missed:
                control.count("events_missed", missed)
                note = "this client lagged behind the event ring; the records keep every verdict"
                chunks.append(_sse("gap", {"missed": missed, "note": note}))
            newest = hub.last_seq
            for event in events:
                chunks.append(
                    _sse(
                        event.kind,
                        self._event_data(event, lagging=newest - event.seq > lag),
                        event_id=event.seq,
                    )
                )
            now = time.monotonic()
            if chunks:
                self.wfile.write(b"".join(chunks))
                self.wfile.flush()
                last_write = now
            elif now - last_write >= control.settings.keepalive_s:
                self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
                last_write = now
            if hub.closed and not events:
                self.wfile.write(_sse("end", {"reason": "line stopped"}))
                self.wfile.flush()
                return

    def _event_data(self, event: LineEvent, *, lagging: bool) -> dict[str, Any]:
        data = dict(event.data, seq=event.seq)
        if not event.had_display:
            return _json_safe(data)
        images = None if lagging else event.display_images()
        if images:
            data.update(images)
        else:
            # Released from the ring's display window, or skipped so this client can catch up.
            data["display_dropped"] = True
            self.server.control.count("display_dropped")
        return _json_safe(data)


class ControlServer:
    """The control endpoint of one line, served on its own thread (`start()`, `stop()`)."""

    def __init__(self, line: Line, settings: ControlSettings, *, data_dir: Path) -> None:
        if not is_loopback(settings.host):
            if not settings.allow_remote:
                raise ConfigError(
                    f"control.host {settings.host!r} is not a loopback address; set "
                    "control.allow_remote: true to expose the control endpoint"
                )
            log.warning(
                "control endpoint bound to %s (not loopback): the bearer token crosses the network in "
                "the clear; put a TLS proxy in front or bind to 127.0.0.1",
                settings.host,
            )
        self.line = line
        self.settings = settings
        self.token = resolve_token(settings, data_dir=data_dir)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._clients = 0
        self._counters: dict[str, int] = {}

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def port(self) -> int:
        """The bound port (known after start(); useful with `port: 0`)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def start(self) -> None:
        """Bind and serve on a thread; `ConfigError` when the address cannot be bound."""
        try:
            server = _Server((self.settings.host, self.settings.port), _Handler, bind_and_activate=False)
        except OSError as exc:
            raise ConfigError(f"control endpoint {self.settings.host}: {exc}") from exc
        server.control = self
        try:
            server.server_bind()
            server.server_activate()
        except OSError as exc:
            server.server_close()
            raise ConfigError(
                f"control endpoint cannot listen on {self.settings.host}:{self.settings.port} ({exc}); "
                "choose another control.port"
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="aoi-control", daemon=True
        )
        self._thread.start()
        log.info("control endpoint on %s", self.url)

    def stop(self) -> None:
        """End the event streams, stop serving and join every thread. Safe to call twice."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def acquire_client(self) -> bool:
        with self._lock:
            if self._clients >= self.settings.max_clients:
                return False
            self._clients += 1
            return True

    def release_client(self) -> None:
        with self._lock:
            self._clients -= 1

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def status(self) -> dict[str, Any]:
        """What GET /status answers: the line's status plus this endpoint's own counters."""
        with self._lock:
            control = {"event_clients": self._clients, **self._counters}
        return {**self.line.status().to_dict(), "paused": self.line.paused, "control": control}
