"""Where the station's events come from: the line in-process or a running service's control endpoint.

Qt-free. A `Source` runs its own threads (events, status polls, actions) and
hands everything to one `EventBuffer`; the Qt thread takes what is buffered
when it is told there is something (a queued signal) and never waits for the
line. The buffer keeps every verdict, alarm and state event (small JSON) but
only the newest display image of non-NG frames and the images of the last
`ng_keep` NG frames: when the Qt thread falls behind, display frames are
dropped and counted, verdicts and counters never.

- `LineSource`: a `Line` in this process; reads its `EventHub` like any consumer.
- `HttpSource`: a service's control endpoint (``GET /events`` server-sent
  events on one thread, ``GET /status`` polls and POSTs on others), with the
  bearer token; it reconnects with a back-off when the service restarts.
"""

from __future__ import annotations

import abc
import base64
import collections
import contextlib
import dataclasses
import http.client
import json
import logging
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from appliance.errors import ConfigError

if TYPE_CHECKING:
    from appliance.line import Line

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.25  # how often a reader thread looks for a stop
_HTTP_TIMEOUT_S = 10.0
_MAX_BACKOFF_S = 5.0


@dataclasses.dataclass
class StreamEvent:
    """One event for the station: `kind` verdict, state, alarm, gap, status, link, action or end."""

    kind: str
    data: dict[str, Any]
    seq: int = 0
    image: np.ndarray | None = None  # RGB uint8 display image of the frame
    overlay: np.ndarray | None = None  # RGB uint8: the frame with its heatmap and defect boxes
    display_dropped: bool = False  # it had display images, dropped on the way (lag)


def decode_jpeg_b64(text: str) -> np.ndarray | None:
    """RGB uint8 pixels of a base64 JPEG, or None when it does not decode."""
    import cv2

    try:
        raw = np.frombuffer(base64.b64decode(text), np.uint8)
    except ValueError:
        return None
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])


def event_from_data(kind: str, data: dict[str, Any], *, seq: int = 0) -> StreamEvent:
    """A `StreamEvent` from one event's JSON (an SSE event or a `LineEvent`'s data plus images)."""
    body = dict(data)
    image_b64 = body.pop("image_jpeg_b64", None)
    overlay_b64 = body.pop("heatmap_jpeg_b64", None)
    dropped = bool(body.pop("display_dropped", False))
    return StreamEvent(
        kind=kind,
        data=body,
        seq=int(body.get("seq", seq) or seq),
        image=decode_jpeg_b64(image_b64) if image_b64 else None,
        overlay=decode_jpeg_b64(overlay_b64) if overlay_b64 else None,
        display_dropped=dropped,
    )


class EventBuffer:
    """Thread-safe hand-over from the source threads to the Qt thread (bounded, never blocks).

    `put` is called by source threads; `take` by the Qt thread. `notify` is
    called (from the putting thread) only when the buffer goes from empty to
    non-empty, so the Qt thread gets one wake-up per batch, not one per event.
    """

    def __init__(self, *, capacity: int = 20_000, ng_keep: int = 12) -> None:
        self.capacity = capacity
        self.ng_keep = ng_keep
        self._events: collections.deque[StreamEvent] = collections.deque()
        self._lock = threading.Lock()
        self._notify: Callable[[], None] | None = None
        self._waiting = False
        self.display_dropped = 0  # display images dropped here because the Qt thread lagged
        self.events_lost = 0  # events dropped at capacity (the Qt thread stalled); verdicts resync
        self.received = 0

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        with self._lock:
            self._notify = notify

    def put(self, event: StreamEvent) -> None:
        with self._lock:
            self.received += 1
            if event.kind == "status":
                # Only the newest status matters.
                for old in [e for e in self._events if e.kind == "status"]:
                    self._events.remove(old)
            if event.kind == "verdict" and (event.image is not None or event.overlay is not None):
                self._drop_stale_images(ng=event.data.get("verdict") == "NG")
            if len(self._events) >= self.capacity:
                lost = self._events.popleft()
                self.events_lost += 1
                if lost.kind == "verdict":
                    # The Qt thread will resync its counters from the next status.
                    self._events.appendleft(StreamEvent("gap", {"missed": 1, "note": "station lagged"}))
            self._events.append(event)
            notify = self._notify if not self._waiting else None
            self._waiting = True
        if notify is not None:
            notify()

    def _drop_stale_images(self, *, ng: bool) -> None:
        """Before an image is added: a non-NG one replaces every waiting non-NG image; an NG one
        leaves the last `ng_keep` - 1 waiting NG images (lock held)."""
        kept_ng = 0
        for old in reversed(self._events):
            if old.kind != "verdict" or (old.image is None and old.overlay is None):
                continue
            if (old.data.get("verdict") == "NG") != ng:
                continue
            if ng:
                kept_ng += 1
                if kept_ng < self.ng_keep:
                    continue
            old.image = old.overlay = None
            old.display_dropped = True
            self.display_dropped += 1

    def take(self, max_events: int = 100_000) -> list[StreamEvent]:
        """Everything waiting, oldest first (called on the Qt thread)."""
        with self._lock:
            n = min(max_events, len(self._events))
            events = [self._events.popleft() for _ in range(n)]
            self._waiting = bool(self._events)
        return events

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


@dataclasses.dataclass(frozen=True)
class Action:
    """An operator action for the line: `name` pause, resume, threshold, bundle or acknowledge."""

    name: str
    user: str
    role: str
    value: Any = None


class Source(abc.ABC):
    """A line the station shows: events, status and actions, each on a thread of its own.

    `start()` begins delivering into the buffer, `stop()` ends and joins every
    thread. Actions are queued (`submit`) and run in order on the actions
    thread; each result comes back as an ``action`` event.
    """

    description = "line"

    def __init__(self, *, status_interval_s: float = 1.0) -> None:
        self.status_interval_s = status_interval_s
        self.buffer: EventBuffer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._actions: queue.Queue[Action | None] = queue.Queue(maxsize=64)

    # --------------------------------------------------------------- what each source does

    @abc.abstractmethod
    def _read_events(self, buffer: EventBuffer, stop: threading.Event) -> None:
        """Put the line's events into `buffer` until `stop` is set (runs on the events thread)."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """The line's status as `GET /status` answers it (blocking; not on the Qt thread)."""

    @abc.abstractmethod
    def _perform(self, action: Action) -> dict[str, Any]:
        """Do one action on the line; raises an `ApplianceError` with the line's reason."""

    # --------------------------------------------------------------- lifecycle

    def start(self, buffer: EventBuffer) -> None:
        if self._threads:
            raise RuntimeError("source already started")
        self.buffer = buffer
        self._stop.clear()
        self._actions = queue.Queue(maxsize=64)  # a stop() may have left its sentinel behind
        for name, target in (
            ("gui-events", lambda: self._read_events(buffer, self._stop)),
            ("gui-status", self._poll_status),
            ("gui-actions", self._run_actions),
        ):
            thread = threading.Thread(target=self._guard(target, name), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _guard(self, target: Callable[[], None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception as exc:  # a bug: say so on the screen instead of dying silently
                log.exception("station thread %s failed", name)
                if self.buffer is not None:
                    self.buffer.put(StreamEvent("link", {"connected": False, "reason": f"{name}: {exc}"}))

        return run

    def stop(self, *, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._actions.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("station thread %s did not end within %.1f s", thread.name, timeout_s)
        self._threads = []

    def submit(self, action: Action) -> bool:
        """Queue an action; False when too many are waiting already."""
        try:
            self._actions.put_nowait(action)
        except queue.Full:
            return False
        return True

    # --------------------------------------------------------------- threads

    def _poll_status(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.status()
            except Exception as exc:
                if self.buffer is not None:
                    self.buffer.put(StreamEvent("link", {"connected": False, "reason": str(exc)}))
            else:
                if self.buffer is not None:
                    self.buffer.put(StreamEvent("status", status))
            self._stop.wait(self.status_interval_s)

    def _run_actions(self) -> None:
        from drivers.errors import ApplianceError

        while True:
            action = self._actions.get()
            if action is None or self._stop.is_set():
                return
            if action.name == "full_resolution":
                if self.buffer is not None:
                    self.buffer.put(self._full_resolution(dict(action.value)))
                continue
            try:
                result = {"ok": True, **self._perform(action)}
            except ApplianceError as exc:
                result = {"ok": False, "error": str(exc)}
            except Exception as exc:  # the station must hear about every action
                log.exception("action %s failed", action.name)
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if self.buffer is not None:
                self.buffer.put(
                    StreamEvent("action", {"action": action.name, "value": action.value, **result})
                )

    def _full_resolution(self, data: dict[str, Any]) -> StreamEvent:
        """The archived full-resolution frame and heatmap of the part `data` names, found through
        the records the line reports in its status (on this machine: in-process, or a service on
        the same host); an event with a `reason` instead when they cannot be had."""
        from appliance.records import RecordsReader
        from drivers.errors import ApplianceError

        event = StreamEvent("full_resolution", {"frame_id": data.get("frame_id"), "part": data})
        try:
            path = str((self.status().get("records") or {}).get("path") or "")
            if not path or not Path(path).is_file():
                event.data["reason"] = "the records of this line are not on this machine"
                return event
            when = data.get("wall_time_s")
            since, until = (when - 60, when + 60) if isinstance(when, int | float) and when else (None, None)
            for _attempt in range(5):  # the archive writes in the background: give it a moment
                rows = RecordsReader(path).query_verdicts(since=since, until=until, limit=5000)
                row = next(
                    (
                        r
                        for r in rows
                        if r.frame_id == data.get("frame_id") and r.part_id == data.get("part_id")
                    ),
                    None,
                )
                if row is not None and row.image_path and Path(row.image_path).is_file():
                    event.image = read_rgb(Path(row.image_path))
                    if row.heatmap_path and Path(row.heatmap_path).is_file():
                        event.overlay = read_rgb(Path(row.heatmap_path))
                    if event.image is not None:
                        return event
                if self._stop.wait(0.4):
                    break
            event.data["reason"] = "this part's image is not in the archive"
        except (ApplianceError, OSError) as exc:
            event.data["reason"] = str(exc)
        return event


def read_rgb(path: Path) -> np.ndarray | None:
    """An archived image (8 or 16 bit, grey or colour) as RGB uint8, or None when unreadable."""
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return None
    if pixels.dtype == np.uint16:
        pixels = (np.asarray(pixels) // 256).astype(np.uint8)
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=2))
    code = cv2.COLOR_BGRA2RGB if pixels.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return np.ascontiguousarray(cv2.cvtColor(pixels, code))


class LineSource(Source):
    """A `Line` running in this process (`aoi gui --config FILE`)."""

    description = "in-process line"

    def __init__(self, line: Line, *, status_interval_s: float = 1.0) -> None:
        super().__init__(status_interval_s=status_interval_s)
        self.line = line

    def _read_events(self, buffer: EventBuffer, stop: threading.Event) -> None:
        hub = self.line.events
        cursor = hub.subscribe()
        buffer.put(StreamEvent("link", {"connected": True, "reason": self.description, "cursor": cursor}))
        try:
            while not stop.is_set():
                events, cursor, missed = hub.read(cursor, timeout_s=_READ_TIMEOUT_S)
                if missed:
                    buffer.put(StreamEvent("gap", {"missed": missed}))
                for event in events:
                    data = dict(event.data, seq=event.seq)
                    if event.had_display:
                        images = event.display_images()
                        if images:
                            data.update(images)
                        else:
                            data["display_dropped"] = True
                    buffer.put(event_from_data(event.kind, data, seq=event.seq))
                if hub.closed and not events:
                    buffer.put(StreamEvent("end", {"reason": "line stopped"}))
                    return
        finally:
            hub.unsubscribe()

    def status(self) -> dict[str, Any]:
        return {**self.line.status().to_dict(), "paused": self.line.paused}

    def _perform(self, action: Action) -> dict[str, Any]:
        line, who = self.line, {"user": action.user, "role": action.role}
        if action.name == "pause":
            line.pause(**who)
            return {"paused": True}
        if action.name == "resume":
            line.resume(**who)
            return {"paused": False}
        if action.name == "threshold":
            previous = line.set_threshold(float(action.value), **who)
            return {"image_threshold": float(action.value), "previous": previous}
        if action.name == "bundle":
            return {"bundle_id": line.switch_bundle(Path(str(action.value)), **who)}
        if action.name == "acknowledge":
            return {"acknowledged": line.acknowledge_alarms(action.value, **who)}
        raise ConfigError(f"unknown station action {action.name!r}")


class HttpSource(Source):
    """A running service's control endpoint (`aoi gui --attach URL`)."""

    def __init__(self, url: str, *, token: str, status_interval_s: float = 1.0) -> None:
        super().__init__(status_interval_s=status_interval_s)
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"--attach {url!r}: give the control endpoint as http://HOST:PORT")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.token = token
        self.description = f"service at {parts.hostname}:{self.port}"
        self._last_seq = 0

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        from drivers.errors import ApplianceError

        conn = self._connection(_HTTP_TIMEOUT_S)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {self.token}"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ApplianceError(f"control endpoint {self.description}: {exc}") from exc
        finally:
            conn.close()
        if response.status == 401:
            raise ConfigError(f"control endpoint {self.description} refused the token; check the token file")
        if response.status != 200:
            raise ApplianceError(str(answer.get("error", f"HTTP {response.status}")))
        return dict(answer)

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status")

    def _perform(self, action: Action) -> dict[str, Any]:
        who = {"user": action.user, "role": action.role}
        if action.name in ("pause", "resume"):
            return self._request("POST", f"/{action.name}", who)
        if action.name == "threshold":
            return self._request("POST", "/threshold", {"image_threshold": float(action.value), **who})
        if action.name == "bundle":
            return self._request("POST", "/bundle", {"path": str(action.value), **who})
        if action.name == "acknowledge":
            return self._request("POST", "/acknowledge", {"source": action.value, **who})
        raise ConfigError(f"unknown station action {action.name!r}")

    def _read_events(self, buffer: EventBuffer, stop: threading.Event) -> None:
        backoff_s = 0.5
        while not stop.is_set():
            try:
                self._stream(buffer, stop)
                backoff_s = 0.5
            except ConfigError as exc:
                buffer.put(StreamEvent("link", {"connected": False, "reason": str(exc)}))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                buffer.put(StreamEvent("link", {"connected": False, "reason": f"{self.description}: {exc}"}))
            if stop.wait(backoff_s):
                return
            backoff_s = min(_MAX_BACKOFF_S, backoff_s * 2)

    def _stream(self, buffer: EventBuffer, stop: threading.Event) -> None:
        """One GET /events over a plain socket: a short receive timeout lets the thread see a stop
        (a timed-out `http.client` response cannot be read again)."""
        sock = socket.create_connection((self.host, self.port), timeout=_HTTP_TIMEOUT_S)
        try:
            resume = f"Last-Event-ID: {self._last_seq}\r\n" if self._last_seq else ""
            sock.sendall(
                (
                    f"GET /events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n{resume}\r\n"
                ).encode()
            )
            sock.settimeout(_READ_TIMEOUT_S)
            pending = b""
            head_done = False
            kind, data_lines = "message", list[str]()
            while not stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    raise ConnectionResetError("the service closed the event stream")
                pending += chunk
                if not head_done:
                    if b"\r\n\r\n" not in pending:
                        if len(pending) > 65536:
                            raise http.client.HTTPException("GET /events: response head too long")
                        continue
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                    code = status_line.split(" ")[1] if " " in status_line else "?"
                    if code == "401":
                        raise ConfigError(
                            f"control endpoint {self.description} refused the token; check the token file"
                        )
                    if code != "200":
                        raise http.client.HTTPException(f"GET /events answered {status_line}")
                    head_done = True
                    buffer.put(StreamEvent("link", {"connected": True, "reason": self.description}))
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if not line:
                        if data_lines:
                            self._dispatch(buffer, kind, "\n".join(data_lines))
                            if kind == "end":
                                raise ConnectionResetError("the line stopped")
                        kind, data_lines = "message", []
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data_lines.append(line[5:].lstrip())
        finally:
            sock.close()

    def _dispatch(self, buffer: EventBuffer, kind: str, text: str) -> None:
        data = json.loads(text)
        if not isinstance(data, dict):
            return
        event = event_from_data(kind, data)
        if event.seq:
            self._last_seq = max(self._last_seq, event.seq)
        buffer.put(event)


def read_token(*, token: str | None, token_file: Path | None) -> str:
    """The control token from the option, the environment's value or a token file."""
    if token:
        return token
    if token_file is None:
        raise ConfigError("no control token: pass --token-file FILE (the service's control.token)")
    try:
        text = token_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"control token file {token_file} cannot be read ({exc}); pass --token-file"
        ) from exc
    if len(text) < 16:
        raise ConfigError(f"control token file {token_file} holds fewer than 16 characters")
    return text
