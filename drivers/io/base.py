"""The line-output interface and the one worker every output shares.

An output turns verdicts into signals a PLC (or a GPIO line, or a log) can act
on before the part reaches the ejector. Every implementation inherits `Output`
and only speaks its protocol through five template methods:

- `_open()`: connect the transport (raise on failure),
- `_send(verdict)`: write the verdict's data (result, frame id, part id, score),
- `_set_reject(active)`: drive the reject signal,
- `_heartbeat(state)`: write the heartbeat signal,
- `_close_transport()`: release sockets and handles (never raises).

Everything else lives here, once: the bounded queue, the worker thread that
serves it, the reject pulse, the heartbeat, reconnect with exponential
back-off, the counters and the alarm.

Timing rules that a PLC programmer can rely on (see `drivers/io/README.md`):

- `publish()` never blocks: it appends to a bounded queue and returns. A full
  queue counts the verdict as undelivered, raises the alarm and logs a warning.
- A verdict's data is written first; for a reject the reject signal is then set,
  held for `pulse_ms` and reset. While it is held, the data stays unchanged
  (the next verdict waits), and two pulses are separated by at least
  `pulse_gap_ms` of inactive signal, so every reject is its own edge.
- A verdict still queued `max_age_ms` after `publish()` is dropped and counted
  undelivered: after an outage, a late reject pulse would hit the wrong part,
  which is worse than none (the PLC should treat a missing verdict as a reject).
- On every (re)connect the reject signal is first written inactive, so a pulse
  cut short by an outage never stays stuck active.
"""

from __future__ import annotations

import abc
import binascii
import collections
import dataclasses
import importlib
import logging
import math
import threading
import time
from typing import Any, ClassVar

from pydantic import Field, model_validator

from drivers.errors import OutputError
from drivers.settings import Settings
from drivers.verdict import Verdict

log = logging.getLogger(__name__)

# Bit 31 of the 32-bit part-id code marks a hashed (non-numeric) part id.
PART_ID_HASHED_FLAG = 0x8000_0000
# The largest numeric part id sent as is; larger numbers are hashed like text.
PART_ID_NUMERIC_MAX = 0x7FFF_FFFF
# Score x1000 saturates one below this; this value itself means "no score" (NaN).
SCORE_MILLI_NONE = 0xFFFF


class OutputSettings(Settings):
    """What every output shares: pulse, heartbeat, timeouts, queue and retry policy.

    Implementations add their own fields and a `type: Literal["..."]`.
    """

    pulse_ms: float = Field(
        default=50.0,
        gt=0,
        le=10_000,
        description="How long the reject signal is held active for one rejected part, in milliseconds.",
    )
    pulse_gap_ms: float = Field(
        default=10.0,
        ge=0,
        le=10_000,
        description=(
            "Minimum time the reject signal stays inactive between two pulses, in milliseconds, so that "
            "the PLC sees a separate edge for every rejected part."
        ),
    )
    heartbeat_period_ms: float = Field(
        default=500.0,
        ge=0,
        le=600_000,
        description=(
            "Period at which the heartbeat signal toggles, in milliseconds (0 disables the heartbeat). "
            "The PLC should raise its own alarm when the heartbeat stops toggling for 3 periods."
        ),
    )
    connect_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Time allowed for one connection attempt, in seconds."
    )
    io_timeout_s: float = Field(
        default=1.0, gt=0, le=60, description="Time allowed for one request and its answer, in seconds."
    )
    max_age_ms: float = Field(
        default=1000.0,
        gt=0,
        le=600_000,
        description=(
            "A verdict still waiting this long after publish() is dropped and counted undelivered, in "
            "milliseconds: a late reject pulse would hit the wrong part. Keep it below the travel time "
            "from the camera to the ejector."
        ),
    )
    queue_size: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description=(
            "How many verdicts may wait for the output (count). When full, a new verdict is counted "
            "undelivered and the alarm is raised; memory never grows."
        ),
    )
    reconnect_min_s: float = Field(
        default=0.2,
        gt=0,
        le=60,
        description=(
            "Delay before the second reconnect attempt after a loss, in seconds (the first is immediate); "
            "it doubles per failure."
        ),
    )
    reconnect_max_s: float = Field(
        default=5.0, gt=0, le=300, description="Cap of the reconnect delay, in seconds."
    )

    @model_validator(mode="after")
    def _verify(self) -> OutputSettings:
        verify_backoff(self)
        verify_pulse_fits_age(self)
        return self


def verify_backoff(settings: OutputSettings) -> None:
    """`reconnect_min_s` must not exceed `reconnect_max_s`."""
    if settings.reconnect_min_s > settings.reconnect_max_s:
        raise ValueError(
            f"reconnect_min_s ({settings.reconnect_min_s}) must be <= reconnect_max_s "
            f"({settings.reconnect_max_s})"
        )


def verify_pulse_fits_age(settings: OutputSettings) -> None:
    """A pulse longer than `max_age_ms` would make every queued reject expire behind it."""
    if settings.pulse_ms + settings.pulse_gap_ms >= settings.max_age_ms:
        raise ValueError(
            f"pulse_ms + pulse_gap_ms ({settings.pulse_ms + settings.pulse_gap_ms:g} ms) must be below "
            f"max_age_ms ({settings.max_age_ms:g} ms)"
        )


@dataclasses.dataclass(frozen=True)
class OutputStatus:
    """A snapshot of an output's health, for the GUI, the metrics and the service watchdog.

    `alarm` is empty while everything is fine; otherwise one line that names the
    output and the problem. `delivered` + `undelivered` + `queued` accounts for
    every verdict ever published.
    """

    connected: bool = False
    delivered: int = 0
    undelivered: int = 0
    reconnects: int = 0
    queued: int = 0
    last_error: str = ""
    alarm: str = ""


@dataclasses.dataclass(frozen=True)
class _Item:
    published_s: float
    verdict: Verdict


def require_module(module: str, *, output_type: str, package: str, extra: str | None) -> Any:
    """Import an optional library for one output type, or raise an `OutputError` saying how to install it.

    `extra` names the pip extra of this project that brings the package (``plc``,
    ``gpio``); without one, the message names the package itself.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = f"pip install '.[{extra}]'" if extra else f"pip install {package}"
        raise OutputError(
            f"output type '{output_type}' needs the Python package '{package}', which is not installed "
            f"({exc}); install it with: {how}"
        ) from exc


def part_id_code(part_id: str) -> int:
    """The 32-bit number a PLC receives for a part id.

    A decimal part id from 0 to 2**31-1 is sent as that number. Anything else
    (text, empty excepted) is sent as its CRC-16/CCITT-FALSE over the UTF-8
    bytes (polynomial 0x1021, initial value 0xFFFF) with bit 31 set, so the PLC
    can tell a hash from a number. An empty part id is 0.
    """
    text = part_id.strip()
    if not text:
        return 0
    if text.isascii() and text.isdigit():
        number = int(text)
        if number <= PART_ID_NUMERIC_MAX:
            return number
    return PART_ID_HASHED_FLAG | binascii.crc_hqx(part_id.encode("utf-8"), 0xFFFF)


def score_milli(score: float) -> int:
    """The score x1000 as an unsigned 16-bit value: clamped to 0..65534, NaN (no score) is 65535."""
    if math.isnan(score):
        return SCORE_MILLI_NONE
    return max(0, min(SCORE_MILLI_NONE - 1, round(score * 1000.0)))


def split_words(value: int, *, low_word_first: bool) -> list[int]:
    """A 32-bit unsigned value as two 16-bit registers in the configured word order."""
    value &= 0xFFFF_FFFF
    low, high = value & 0xFFFF, value >> 16
    return [low, high] if low_word_first else [high, low]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Output(abc.ABC):
    """A line output: `connect()`, `publish(verdict)` (never blocks), `status()`, `close()`.

    The worker thread is started by `connect()`. Verdicts published before it
    wait in the queue (subject to `max_age_ms`). Use as a context manager to
    connect and close.
    """

    #: The `type:` value that selects this output in the configuration.
    type_name: ClassVar[str] = "output"
    #: The settings class this output is configured with.
    settings_class: ClassVar[type[OutputSettings]] = OutputSettings

    def __init__(self, settings: OutputSettings) -> None:
        if not isinstance(settings, self.settings_class):
            raise OutputError(
                f"{type(self).__name__} needs {self.settings_class.__name__}, got {type(settings).__name__}"
            )
        self.settings = settings
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Item] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._close_deadline = math.inf
        self._first_attempt_done = threading.Event()
        # Counters and health, guarded by self._cond.
        self._connected = False
        self._delivered = 0
        self._undelivered = 0
        self._reconnects = 0
        self._last_error = ""
        self._link_alarm = ""
        self._overflow = 0
        self._expired_in_episode = 0
        self._closed_drops = 0
        # Worker-only state (touched by the worker thread alone once it runs).
        self._ever_connected = False
        self._outage_since: float | None = None
        self._outage_logged = False
        self._backoff_s = settings.reconnect_min_s
        self._retry_at = 0.0
        self._pulse_end: float | None = None
        self._in_flight = False  # a verdict taken from the queue and not yet sent or put back
        self._ready_at = 0.0
        self._hb_state = False
        self._hb_due = math.inf

    # ------------------------------------------------------------------ public

    @property
    def name(self) -> str:
        """A short human name for logs and alarms, e.g. ``modbus 127.0.0.1:502``."""
        return f"{self.type_name} {self.target()}"

    @abc.abstractmethod
    def target(self) -> str:
        """Where the signals go (host:port, chip and line, file): for logs and alarms."""

    def check(self) -> None:
        """Raise `OutputError` now for what reconnecting cannot fix (a missing library, a missing device).

        `create_output` calls it so a bad choice fails at start-up; `connect()` calls it again.
        """
        self._prepare()

    def connect(self, *, wait_s: float | None = None) -> bool:
        """Start the worker, which connects and keeps reconnecting; safe to call twice.

        Waits up to `wait_s` seconds (default: `connect_timeout_s`) for the first
        connection attempt and returns whether the output is connected. An
        unreachable PLC is not an exception: it raises the alarm and the worker
        keeps retrying. Configuration errors (a missing library) raise `OutputError`.
        """
        with self._cond:
            if self._closed:
                raise OutputError(f"{self.name}: connect() after close()")
            running = self._thread is not None
        if not running:
            # Outside the lock: imports may take a while and publish() must never wait for them.
            self._prepare()
        thread = None
        with self._cond:
            if self._thread is None and not self._closed:
                thread = self._thread = threading.Thread(
                    target=self._worker_main, name=f"aoi-output-{self.type_name}", daemon=True
                )
        if thread is not None:
            thread.start()
        limit_s = self.settings.connect_timeout_s if wait_s is None else wait_s
        self._first_attempt_done.wait(timeout=max(0.0, limit_s) + 0.05)
        with self._cond:
            return self._connected

    def publish(self, verdict: Verdict) -> None:
        """Queue a verdict for the worker and return at once; never blocks, never raises for I/O.

        A full queue (or a closed output) counts the verdict undelivered, raises
        the alarm and logs a warning once per episode.
        """
        now = time.monotonic()
        warn = ""
        with self._cond:
            if self._closed:
                self._undelivered += 1
                self._closed_drops += 1
                if self._closed_drops == 1:
                    warn = f"{self.name}: verdict {verdict.frame_id} published after close(); not delivered"
            elif len(self._queue) >= self.settings.queue_size:
                self._undelivered += 1
                self._overflow += 1
                if self._overflow == 1:
                    warn = (
                        f"{self.name}: queue full ({self.settings.queue_size} verdicts waiting); verdict "
                        f"{verdict.frame_id} and following ones are counted undelivered"
                    )
            else:
                self._queue.append(_Item(now, verdict))
                self._cond.notify()
        if warn:
            log.warning(warn)

    def status(self) -> OutputStatus:
        """A consistent snapshot of the counters and the alarm."""
        with self._cond:
            alarms = []
            if self._link_alarm:
                alarms.append(self._link_alarm)
            if self._overflow:
                alarms.append(f"{self.name}: queue full, {self._overflow} verdict(s) not delivered")
            if self._closed and self._thread is None and not self._link_alarm:
                alarms.append(f"{self.name}: closed")
            return OutputStatus(
                connected=self._connected,
                delivered=self._delivered,
                undelivered=self._undelivered,
                reconnects=self._reconnects,
                queued=len(self._queue),
                last_error=self._last_error,
                alarm="; ".join(alarms),
            )

    def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait up to `timeout_s` seconds until nothing is queued and no pulse is held."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                idle = not self._queue and not self._in_flight and self._pulse_end is None
            if idle:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def close(self, *, timeout_s: float = 2.0) -> None:
        """Deliver what can be delivered within `timeout_s` seconds, reset the reject signal,
        stop the worker and release the transport. Idempotent.

        Verdicts still queued at the deadline are counted undelivered.
        """
        dropped = 0
        with self._cond:
            if self._closed:
                thread = None
            else:
                self._closed = True
                self._close_deadline = time.monotonic() + max(0.0, timeout_s)
                thread = self._thread
                self._cond.notify_all()
                if thread is None:
                    dropped = self._drop_queue_locked()
        if thread is None:
            if dropped:
                log.warning(
                    "%s: %d verdict(s) not delivered: closed before the worker ran", self.name, dropped
                )
            return
        # The worker honours the deadline between I/O calls; one call may take up to its timeout.
        join_s = max(0.0, timeout_s) + self.settings.connect_timeout_s + self.settings.io_timeout_s + 1.0
        thread.join(timeout=join_s)
        if thread.is_alive():
            log.error(
                "%s: worker did not stop within %.1f s; it is a daemon and dies with the process",
                self.name,
                join_s,
            )

    def __enter__(self) -> Output:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------- template methods

    def _prepare(self) -> None:  # noqa: B027 - optional hook
        """Check, on the caller's thread, what reconnecting cannot fix (e.g. a missing library).

        Raise `OutputError`; the default checks nothing.
        """

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect the transport within `connect_timeout_s`; raise on failure."""

    @abc.abstractmethod
    def _send(self, verdict: Verdict) -> None:
        """Write the verdict's data (not the reject signal); raise on failure."""

    @abc.abstractmethod
    def _set_reject(self, active: bool) -> None:
        """Drive the reject signal active or inactive; raise on failure."""

    @abc.abstractmethod
    def _heartbeat(self, state: bool) -> None:
        """Write the heartbeat signal; raise on failure."""

    @abc.abstractmethod
    def _close_transport(self) -> None:
        """Release the transport (sockets, handles, event loops). Must not raise; safe to call twice."""

    # ------------------------------------------------------------ the worker

    def _worker_main(self) -> None:
        try:
            self._worker_loop()
        except Exception as exc:  # a bug in an implementation must not pass silently
            log.exception("%s: output worker crashed", self.name)
            with self._cond:
                self._connected = False
                self._last_error = _describe(exc)
                self._link_alarm = f"{self.name}: output worker stopped ({self._last_error})"
        finally:
            self._shutdown()
            self._first_attempt_done.set()

    def _worker_loop(self) -> None:
        while True:
            self._end_overflow_if_room()
            now = time.monotonic()
            with self._cond:
                closing = self._closed
                deadline = self._close_deadline
                empty = not self._queue
            if closing and (now >= deadline or (empty and self._pulse_end is None)):
                return
            if not self._connected:
                self._purge_expired(now)
                if now >= self._retry_at:
                    self._try_connect()
                    continue
                self._wait_until(min(self._retry_at, deadline))
                continue
            if not self._worker_round(now):
                continue
            self._wait_until(min(self._next_deadline(), deadline))

    def _worker_round(self, now: float) -> bool:
        """One round while connected: end a pulse, beat, send one verdict. False after a loss."""
        try:
            if self._pulse_end is not None and now >= self._pulse_end:
                self._set_reject(False)
                self._pulse_end = None
                self._ready_at = time.monotonic() + self.settings.pulse_gap_ms / 1000.0
            if now >= self._hb_due:
                self._hb_state = not self._hb_state
                self._heartbeat(self._hb_state)
                self._hb_due = now + self.settings.heartbeat_period_ms / 1000.0
        except Exception as exc:
            self._lost(exc)
            return False
        if self._pulse_end is not None:
            return True
        item = self._take(time.monotonic())
        if item is None:
            return True
        try:
            self._send(item.verdict)
            if item.verdict.reject:
                self._set_reject(True)
                self._pulse_end = time.monotonic() + self.settings.pulse_ms / 1000.0
        except Exception as exc:
            with self._cond:
                # Back at the head: retried after the reconnect unless it is too old by then.
                self._queue.appendleft(item)
                self._in_flight = False
            self._lost(exc)
            return False
        with self._cond:
            self._delivered += 1
            self._in_flight = False
            expired_ended = self._expired_in_episode
            self._expired_in_episode = 0
        if expired_ended:
            log.warning(
                "%s: %d verdict(s) expired (older than max_age_ms=%g) before this one was sent",
                self.name,
                expired_ended,
                self.settings.max_age_ms,
            )
        return True

    def _end_overflow_if_room(self) -> None:
        """A queue-full episode ends once the queue has room again: log its toll, clear that alarm."""
        with self._cond:
            dropped = self._overflow if len(self._queue) < self.settings.queue_size else 0
            if dropped:
                self._overflow = 0
        if dropped:
            log.warning(
                "%s: queue has room again; %d verdict(s) were not delivered while it was full",
                self.name,
                dropped,
            )

    def _take(self, now: float) -> _Item | None:
        """The oldest verdict that is still young enough and may go now (a reject waits out the gap)."""
        self._purge_expired(now)
        with self._cond:
            if not self._queue:
                return None
            if self._queue[0].verdict.reject and now < self._ready_at:
                return None
            self._in_flight = True
            return self._queue.popleft()

    def _purge_expired(self, now: float) -> None:
        max_age_s = self.settings.max_age_ms / 1000.0
        expired = 0
        with self._cond:
            while self._queue and now - self._queue[0].published_s > max_age_s:
                self._queue.popleft()
                expired += 1
            self._undelivered += expired
            self._expired_in_episode += expired
            first = expired > 0 and self._expired_in_episode == expired
        if first and self._connected:
            log.warning(
                "%s: verdicts older than max_age_ms=%g are dropped (not sent late); "
                "the output cannot keep up with the line",
                self.name,
                self.settings.max_age_ms,
            )

    def _next_deadline(self) -> float:
        candidates = [self._hb_due]
        if self._pulse_end is not None:
            candidates.append(self._pulse_end)
        else:
            with self._cond:
                head = self._queue[0] if self._queue else None
            if head is not None:
                candidates.append(self._ready_at if head.verdict.reject else time.monotonic())
        return min(candidates)

    def _wait_until(self, when: float) -> None:
        timeout = when - time.monotonic()
        if timeout <= 0:
            return
        with self._cond:
            if self._closed and not self._queue and self._pulse_end is None:
                return  # closing with nothing left: the loop ends at its next check
            # publish() and close() notify, so the worker wakes early for them; a spurious
            # wake-up only costs one more round of the loop.
            self._cond.wait(timeout=min(timeout, 1.0))

    def _try_connect(self) -> None:
        try:
            self._open()
            # A pulse cut short by an outage must not stay active on the line.
            self._set_reject(False)
            if self.settings.heartbeat_period_ms > 0:
                self._heartbeat(self._hb_state)
        except Exception as exc:
            self._close_quietly()
            self._connect_failed(exc)
            self._first_attempt_done.set()
            return
        now = time.monotonic()
        self._pulse_end = None
        self._ready_at = now
        self._backoff_s = self.settings.reconnect_min_s
        self._hb_due = (
            now + self.settings.heartbeat_period_ms / 1000.0
            if self.settings.heartbeat_period_ms > 0
            else math.inf
        )
        with self._cond:
            self._connected = True
            self._link_alarm = ""
            if self._ever_connected:
                self._reconnects += 1
            expired = self._expired_in_episode
            self._expired_in_episode = 0
        if self._ever_connected and self._outage_since is not None:
            log.warning(
                "%s: reconnected after %.1f s; %d verdict(s) expired during the outage",
                self.name,
                now - self._outage_since,
                expired,
            )
        else:
            log.info("%s: connected", self.name)
        self._ever_connected = True
        self._outage_since = None
        self._outage_logged = False
        self._first_attempt_done.set()

    def _connect_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        err = _describe(exc)
        delay = self._backoff_s
        self._retry_at = now + delay
        self._backoff_s = min(self._backoff_s * 2.0, self.settings.reconnect_max_s)
        if self._outage_since is None:
            self._outage_since = now
        verb = "connection lost" if self._ever_connected else "cannot connect"
        with self._cond:
            self._last_error = err
            self._link_alarm = f"{self.name}: {verb} ({err}); retrying"
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "%s: %s (%s); retrying with back-off up to %g s; verdicts are counted, not sent late",
                self.name,
                verb,
                err,
                self.settings.reconnect_max_s,
            )

    def _lost(self, exc: BaseException) -> None:
        """The transport failed mid-run: close it, raise the alarm, retry at once and then with back-off."""
        now = time.monotonic()
        err = _describe(exc)
        self._close_quietly()
        self._pulse_end = None
        self._outage_since = now
        self._retry_at = now
        self._backoff_s = self.settings.reconnect_min_s
        with self._cond:
            self._connected = False
            self._last_error = err
            self._link_alarm = f"{self.name}: connection lost ({err}); retrying"
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "%s: connection lost (%s); retrying with back-off up to %g s; "
                "verdicts are counted, not sent late",
                self.name,
                err,
                self.settings.reconnect_max_s,
            )

    def _close_quietly(self) -> None:
        try:
            self._close_transport()
        except Exception:  # the contract says it must not raise; a broken one must not kill the worker
            log.debug("%s: _close_transport raised", self.name, exc_info=True)

    def _shutdown(self) -> None:
        if self._connected:
            try:
                self._set_reject(False)
            except Exception as exc:
                log.warning("%s: could not reset the reject signal on close (%s)", self.name, _describe(exc))
        self._close_quietly()
        self._pulse_end = None
        with self._cond:
            self._connected = False
            dropped = self._drop_queue_locked()
            why = "close() deadline reached" if self._closed else "the output worker stopped"
            self._thread = None
        if dropped:
            log.warning("%s: %d verdict(s) not delivered: %s", self.name, dropped, why)

    def _drop_queue_locked(self) -> int:
        """Count every queued verdict undelivered and empty the queue; the caller holds the lock."""
        left = len(self._queue)
        self._undelivered += left
        self._queue.clear()
        return left
