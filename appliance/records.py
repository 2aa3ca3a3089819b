"""The appliance's records: every verdict, alarm and operator action, in one SQLite file.

The inspection worker never waits on the disk: `add_verdict`, `record_action`,
`raise_alarm` and `clear_alarm` append to a bounded in-memory queue, and one
writer thread commits what is queued in batched transactions (WAL journal,
``synchronous=NORMAL``: a commit does not fsync, a power loss may forget the
last moments, but the file is never corrupted by it).

**A record is never dropped.** When the queue is full the caller waits up to
`block_timeout_ms` for room; if there is still none it writes the record
itself, synchronously, on its own short-lived connection (slower, but the line
keeps its history). Only if that write fails too (the disk is full or broken)
does the caller get a `RecordsError`: every record is either in the database,
in the queue, or was refused loudly. Records still queued when the database
has failed through `close()` are logged at ERROR, one line each, and counted
as `lost`.

Reads never go through the writer: `RecordsReader` opens a separate read-only
connection per call, so the GUI, the CLI (`aoi records`) or another process can
query while the line writes.

Times are unix seconds (UTC) in the database; exports turn them into ISO 8601
local times. The schema is versioned: `MIGRATIONS` is a list of statement
lists, the `schema_version` table holds how many have been applied, and a file
written by a newer appliance, or by something else entirely, is refused with
one line that names the path and what to do.

Alarms are keyed by their source (``"camera"``, ``"archive"``, ``"output:plc"``):
a source has at most one active alarm, raising the same message again is a
no-op (so a status can be polled and forwarded every frame), and alarms left
active by a previous run are marked cleared at start, because nothing in this
run knows whether their condition still holds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from appliance.errors import RecordsError
from drivers.camera.acquisition import Worker
from drivers.settings import Settings
from drivers.verdict import Result, Verdict

log = logging.getLogger(__name__)

# "AOIR" in PRAGMA application_id marks a file as ours (`file(1)` shows it too).
APPLICATION_ID = 0x414F4952
_SQLITE_HEADER = b"SQLite format 3\x00"

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "error", "critical")

# Each entry moves the schema one version up; never edit an entry that has shipped.
MIGRATIONS: list[list[str]] = [
    [
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE verdicts (
            id INTEGER PRIMARY KEY,
            frame_id INTEGER NOT NULL,
            part_id TEXT NOT NULL DEFAULT '',
            acquired_at REAL,
            decided_at REAL NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ('OK', 'NG', 'UNINSPECTED')),
            score REAL,
            defects TEXT NOT NULL DEFAULT '[]',
            latency_ms REAL,
            bundle_id TEXT NOT NULL DEFAULT '',
            bundle_version TEXT NOT NULL DEFAULT '',
            recipe TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            image_path TEXT,
            heatmap_path TEXT
        )""",
        "CREATE INDEX verdicts_decided_at ON verdicts (decided_at)",
        "CREATE INDEX verdicts_part_id ON verdicts (part_id)",
        """CREATE TABLE alarms (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            severity TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
            message TEXT NOT NULL,
            raised_at REAL NOT NULL,
            cleared_at REAL,
            acknowledged_at REAL,
            acknowledged_by TEXT
        )""",
        "CREATE INDEX alarms_raised_at ON alarms (raised_at)",
        "CREATE INDEX alarms_active ON alarms (source, cleared_at)",
        """CREATE TABLE operator_actions (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            user TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            details TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX operator_actions_time ON operator_actions (time)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT_VERDICT = (
    "INSERT INTO verdicts (frame_id, part_id, acquired_at, decided_at, verdict, score, defects, "
    "latency_ms, bundle_id, bundle_version, recipe, reason, image_path, heatmap_path) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ACTION = "INSERT INTO operator_actions (time, user, role, action, details) VALUES (?, ?, ?, ?, ?)"
# Rows deleted per retention step, so pruning a long backlog never holds the write lock for long.
_PRUNE_CHUNK = 5000
_PRUNE_PERIOD_S = 3600.0


class RecordsSettings(Settings):
    """Where the records live and how the writer batches them."""

    path: Path = Field(
        default=Path("records/aoi-records.sqlite3"),
        description="SQLite database file (path); its folder is created, the file too if missing.",
    )
    queue_size: int = Field(
        default=10000,
        ge=1,
        description="Records waiting for the writer thread at most (count), besides the batch being "
        "committed; a full queue makes the caller wait, then write itself.",
    )
    batch_size: int = Field(
        default=500, ge=1, description="Records committed in one transaction at most (count)."
    )
    flush_interval_ms: float = Field(
        default=100.0,
        ge=0.0,
        description="Longest a record waits for more to join its transaction before it is committed (ms).",
    )
    block_timeout_ms: float = Field(
        default=1000.0,
        ge=0.0,
        description="How long a caller waits for room in a full queue before it writes the record "
        "itself (ms).",
    )
    busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        description="How long a connection waits for another one's lock before it fails (ms).",
    )
    retention_days: float = Field(
        default=0.0,
        ge=0.0,
        description="Delete verdicts, and alarms both cleared and acknowledged, older than this (days); "
        "0 keeps everything. The operator-action audit log is always kept.",
    )
    close_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        description="How long close() waits for the writer to commit what is queued (s).",
    )


@dataclasses.dataclass(frozen=True)
class RecordsStatus:
    """A snapshot of the writer's counters, for the GUI, metrics and logs."""

    path: str
    running: bool
    queued: int
    max_queued: int
    written: int  # records committed by the writer thread
    written_sync: int  # records a caller wrote itself because the queue stayed full
    waited: int  # times a caller had to wait for room in the queue
    write_errors: int  # failed transactions (retried)
    lost: int  # records that could not be stored at all
    last_error: str


@dataclasses.dataclass(frozen=True)
class VerdictRecord:
    """One row of `verdicts`; times in unix seconds."""

    id: int
    frame_id: int
    part_id: str
    acquired_at: float | None
    decided_at: float
    verdict: str
    score: float | None
    defects: list[dict[str, Any]]
    latency_ms: float | None
    bundle_id: str
    bundle_version: str
    recipe: str
    reason: str
    image_path: str | None
    heatmap_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AlarmRecord:
    """One row of `alarms`; `active` until cleared, listed until acknowledged too."""

    id: int
    source: str
    severity: str
    message: str
    raised_at: float
    cleared_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ActionRecord:
    """One row of the `operator_actions` audit log."""

    id: int
    time: float
    user: str
    role: str
    action: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TimeArg = float | dt.datetime | None


def to_unix_s(value: TimeArg) -> float | None:
    """Unix seconds from unix seconds or a datetime (a naive one is local time)."""
    if value is None or isinstance(value, float | int):
        return None if value is None else float(value)
    return value.timestamp()


def iso_time(unix_s: float | None) -> str | None:
    """ISO 8601 local time with its UTC offset, to the millisecond."""
    if unix_s is None:
        return None
    return dt.datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="milliseconds")


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _json(value: Any) -> str:
    """JSON without NaN (not JSON): NaN floats become null."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------- opening and schema


def _unreadable(path: Path, exc: BaseException) -> RecordsError:
    return RecordsError(
        f"records database {path} is corrupt or unreadable ({exc}); move it aside to start "
        "new records, or restore it from a backup"
    )


def _check_header(path: Path) -> None:
    """Refuse a directory or a file that is not SQLite before SQLite gets to it."""
    if path.is_dir():
        raise RecordsError(f"records database {path} is a directory; set records.path to a file")
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RecordsError(f"records database {path} cannot be read ({exc}); check its permissions") from exc
    if header and header != _SQLITE_HEADER:
        raise RecordsError(
            f"records database {path} is not an SQLite database (a foreign or corrupt file); "
            "move it aside or set records.path to another file"
        )


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The applied schema version (0: empty file); refuses a foreign or newer database."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    foreign = app_id not in (0, APPLICATION_ID) or (tables and "schema_version" not in tables)
    if foreign:
        raise RecordsError(
            f"records database {path} belongs to another program (tables: {', '.join(sorted(tables))}); "
            "move it aside or set records.path to another file"
        )
    if not tables:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RecordsError(
            f"records database {path} has schema version {version}, newer than this appliance's "
            f"{SCHEMA_VERSION}; update the appliance or set records.path to another file"
        )
    return version


def _configure(conn: sqlite3.Connection, *, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA synchronous = NORMAL")


def _open_writer(path: Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """A write connection on a WAL database at the current schema version (migrated if older)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordsError(
            f"records folder {path.parent} cannot be created ({exc}); check records.path"
        ) from exc
    _check_header(path)
    try:
        # isolation_level=None: transactions are begun and committed explicitly, batch by batch.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise RecordsError(f"records database {path} cannot be opened ({exc}); check records.path") from exc
    try:
        _configure(conn, busy_timeout_ms=busy_timeout_ms)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning(
                "records database %s: WAL journal not available (mode %s); writes lock readers", path, mode
            )
        _migrate(conn, path)
    except RecordsError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _unreadable(path, exc) from exc
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(conn, path)
        if version == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (number,))
            log.info("records database %s: schema migrated to version %d", path, number)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------------- reads


def _verdict(row: sqlite3.Row) -> VerdictRecord:
    values = dict(row)
    values["defects"] = json.loads(values["defects"] or "[]")
    return VerdictRecord(**values)


def _alarm(row: sqlite3.Row) -> AlarmRecord:
    return AlarmRecord(**dict(row))


def _action(row: sqlite3.Row) -> ActionRecord:
    values = dict(row)
    values["details"] = json.loads(values["details"] or "{}")
    return ActionRecord(**values)


def _range(column: str, since: TimeArg, until: TimeArg) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for op, value in ((">=", since), ("<", until)):
        seconds = to_unix_s(value)
        if seconds is not None:
            clauses.append(f"{column} {op} ?")
            params.append(seconds)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class RecordsReader:
    """Read-only access to a records database, from any thread or process.

    Each call opens its own read-only connection, so readers never share state
    with the writer and never block it (WAL).
    """

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        if not self.path.is_file():
            _check_header(self.path)
            raise RecordsError(
                f"records database {self.path} does not exist; check the path "
                "(the appliance writes it at records.path)"
            )
        _check_header(self.path)
        with self._connect() as conn:
            try:
                version = _schema_version(conn, self.path)
            except sqlite3.DatabaseError as exc:
                raise _unreadable(self.path, exc) from exc
        if version == 0:
            raise RecordsError(f"records database {self.path} is empty (no records yet); check the path")
        if version < SCHEMA_VERSION:
            raise RecordsError(
                f"records database {self.path} has schema version {version}, older than {SCHEMA_VERSION}; "
                "start the appliance on it once to upgrade it"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise RecordsError(
                f"records database {self.path} cannot be opened ({exc}); check the path"
            ) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.path, exc) from exc
        finally:
            conn.close()

    def query_verdicts(
        self,
        *,
        since: TimeArg = None,
        until: TimeArg = None,
        limit: int | None = 1000,
        result: Result | None = None,
    ) -> list[VerdictRecord]:
        """Verdicts decided in [since, until) (unix s or datetime), newest first, at most `limit`."""
        where, params = _range("decided_at", since, until)
        if result is not None:
            where += (" AND " if where else " WHERE ") + "verdict = ?"
            params.append(result.value)
        sql = f"SELECT * FROM verdicts{where} ORDER BY decided_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as conn:
            return [_verdict(row) for row in conn.execute(sql, params)]

    def iter_verdicts(self, *, since: TimeArg = None, until: TimeArg = None) -> Iterator[VerdictRecord]:
        """Verdicts decided in [since, until), oldest first, streamed (for exports of any size)."""
        where, params = _range("decided_at", since, until)
        with self._connect() as conn:
            cursor = conn.execute(f"SELECT * FROM verdicts{where} ORDER BY decided_at, id", params)
            while rows := cursor.fetchmany(1000):
                yield from (_verdict(row) for row in rows)

    def counts(self, *, since: TimeArg = None, until: TimeArg = None) -> dict[str, int]:
        """Verdicts decided in [since, until): {"total", "ok", "ng", "uninspected"}."""
        where, params = _range("decided_at", since, until)
        counts = {"total": 0, "ok": 0, "ng": 0, "uninspected": 0}
        with self._connect() as conn:
            for verdict, n in conn.execute(
                f"SELECT verdict, COUNT(*) FROM verdicts{where} GROUP BY verdict", params
            ):
                counts[str(verdict).lower()] = int(n)
        counts["total"] = counts["ok"] + counts["ng"] + counts["uninspected"]
        return counts

    def alarms(
        self,
        *,
        active_only: bool = False,
        since: TimeArg = None,
        until: TimeArg = None,
        limit: int | None = 1000,
    ) -> list[AlarmRecord]:
        """Alarms raised in [since, until), newest first; `active_only`: not cleared yet."""
        where, params = _range("raised_at", since, until)
        if active_only:
            where += (" AND " if where else " WHERE ") + "cleared_at IS NULL"
        sql = f"SELECT * FROM alarms{where} ORDER BY raised_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as conn:
            return [_alarm(row) for row in conn.execute(sql, params)]

    def actions(
        self, *, since: TimeArg = None, until: TimeArg = None, limit: int | None = 1000
    ) -> list[ActionRecord]:
        """Operator actions (the audit log) in [since, until), newest first."""
        where, params = _range("time", since, until)
        sql = f"SELECT * FROM operator_actions{where} ORDER BY time DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as conn:
            return [_action(row) for row in conn.execute(sql, params)]


# --------------------------------------------------------------------------------- writes


class _Reply:
    """The writer's answer to an operation a caller waits for (flush, acknowledge)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None


@dataclasses.dataclass
class _Item:
    kind: Literal["verdict", "action", "alarm_raise", "alarm_clear", "acknowledge", "flush"]
    params: tuple[Any, ...]
    reply: _Reply | None = None
    queued_at_s: float = 0.0  # monotonic

    @property
    def is_record(self) -> bool:
        return self.kind != "flush"


def _apply(conn: sqlite3.Connection, item: _Item) -> Any:
    """Execute one item inside the caller's open transaction; returns the reply value."""
    match item.kind:
        case "verdict":
            conn.execute(_INSERT_VERDICT, item.params)
        case "action":
            conn.execute(_INSERT_ACTION, item.params)
        case "alarm_raise":
            source, severity, message, t = item.params
            active = conn.execute(
                "SELECT message FROM alarms WHERE source = ? AND cleared_at IS NULL", (source,)
            ).fetchall()
            if any(row[0] == message for row in active):
                return None
            conn.execute(
                "UPDATE alarms SET cleared_at = ? WHERE source = ? AND cleared_at IS NULL", (t, source)
            )
            conn.execute(
                "INSERT INTO alarms (source, severity, message, raised_at) VALUES (?, ?, ?, ?)",
                (source, severity, message, t),
            )
        case "alarm_clear":
            source, t = item.params
            conn.execute(
                "UPDATE alarms SET cleared_at = ? WHERE source = ? AND cleared_at IS NULL", (t, source)
            )
        case "acknowledge":
            alarm_id, user, role, t = item.params
            row = conn.execute(
                "SELECT source, message, acknowledged_at FROM alarms WHERE id = ?", (alarm_id,)
            ).fetchone()
            if row is None:
                return "unknown"
            if row[2] is not None:
                return False
            conn.execute(
                "UPDATE alarms SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?", (t, user, alarm_id)
            )
            details = _json({"alarm_id": alarm_id, "source": row[0], "message": row[1]})
            conn.execute(_INSERT_ACTION, (t, user, role, "acknowledge_alarm", details))
            return True
        case "flush":
            return True
    return None


def _apply_batch(conn: sqlite3.Connection, items: Sequence[_Item]) -> list[Any]:
    """All items in one transaction: all of them are committed, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        values = [_apply(conn, item) for item in items]
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return values


class _WriterWorker(Worker):
    thread_name = "records-writer"

    def __init__(self, records: Records) -> None:
        super().__init__()
        self._records = records

    def run_once(self) -> bool:
        return self._records._writer_step(self)

    def _on_end(self) -> None:
        self._records._writer_end()


class Records:
    """The records database of a running appliance: queued writes on one thread, reads anywhere.

    Open it, hand it verdicts, alarms and operator actions from any thread, and
    `close()` it on shutdown: close commits everything queued before it returns.
    """

    def __init__(self, settings: RecordsSettings) -> None:
        self.settings = settings
        self.path = settings.path
        self._conn = _open_writer(self.path, busy_timeout_ms=settings.busy_timeout_ms)
        try:
            stale = self._conn.execute(
                "UPDATE alarms SET cleared_at = ? WHERE cleared_at IS NULL", (time.time(),)
            ).rowcount
            if stale:
                log.info(
                    "records database %s: %d alarms of the previous run marked cleared", self.path, stale
                )
            self.reader = RecordsReader(self.path, busy_timeout_ms=settings.busy_timeout_ms)
        except BaseException:
            self._conn.close()
            raise
        self._cond = threading.Condition()
        self._pending: collections.deque[_Item] = collections.deque()
        self._flushes = 0  # flush markers queued; a batch is cut at each
        self._closed = False
        self._active_alarms: dict[str, str] = {}
        self._next_prune_s = time.monotonic()
        self._counters = collections.Counter[str]()
        self._max_queued = 0
        self._last_error = ""
        self._worker = _WriterWorker(self)
        self._worker.start()

    # ------------------------------------------------------------------ public writes

    def add_verdict(
        self,
        verdict: Verdict,
        *,
        bundle_id: str,
        bundle_version: str,
        recipe: str,
        image_path: Path | str | None = None,
        heatmap_path: Path | str | None = None,
    ) -> None:
        """Record one verdict; returns at once unless the queue is full (see the module docstring).

        `decided_at` is the time of this call; `acquired_at` the frame's wall time (if known).
        """
        defects = _json([d.to_dict() for d in verdict.defects])
        params = (
            int(verdict.frame_id),
            str(verdict.part_id),
            float(verdict.wall_time_s) if verdict.wall_time_s else None,
            time.time(),
            Result(verdict.result).value,
            _finite(verdict.score),
            defects,
            _finite(verdict.latency_ms),
            bundle_id,
            bundle_version,
            recipe,
            verdict.reason,
            None if image_path is None else str(image_path),
            None if heatmap_path is None else str(heatmap_path),
        )
        self._submit(_Item("verdict", params))

    def record_action(
        self, user: str, role: str, action: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Append an operator action to the audit log (who did what, with what parameters)."""
        self._submit(_Item("action", (time.time(), user, role, action, _json(dict(details or {})))))

    def raise_alarm(self, source: str, *, severity: Severity, message: str) -> None:
        """Raise `source`'s alarm; the same message again is a no-op, a new one replaces it."""
        if severity not in SEVERITIES:
            raise ValueError(f"alarm severity must be one of {SEVERITIES}, got {severity!r}")
        with self._cond:
            if self._active_alarms.get(source) == message:
                return
            self._active_alarms[source] = message
        self._submit(_Item("alarm_raise", (source, severity, message, time.time())))

    def clear_alarm(self, source: str) -> None:
        """Mark `source`'s active alarm cleared (its condition is gone); a no-op if none."""
        with self._cond:
            if self._active_alarms.pop(source, None) is None:
                return
        self._submit(_Item("alarm_clear", (source, time.time())))

    def acknowledge_alarm(
        self, alarm_id: int, *, user: str, role: str = "operator", timeout_s: float = 5.0
    ) -> bool:
        """Acknowledge an alarm and audit it; False if it was acknowledged already.

        Waits up to `timeout_s` for the writer to commit; raises `RecordsError`
        for an unknown id or when the commit does not happen in time.
        """
        reply = _Reply()
        self._submit(_Item("acknowledge", (int(alarm_id), user, role, time.time()), reply))
        if not reply.done.wait(timeout_s):
            raise RecordsError(
                f"acknowledging alarm {alarm_id} in {self.path} did not complete within {timeout_s:.1f} s; "
                "the records database is busy or failing, see the log"
            )
        if reply.value == "unknown":
            raise RecordsError(f"alarm {alarm_id} does not exist in {self.path}; pick an alarm from the list")
        return bool(reply.value)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything submitted before this call is committed; False on timeout."""
        reply = _Reply()
        with self._cond:
            if self._closed or not self._worker.running:
                return not self._pending
            # A flush marker may exceed queue_size: it holds no data and must not wait for room.
            self._pending.append(_Item("flush", (), reply, time.monotonic()))
            self._flushes += 1
            self._cond.notify_all()
        return reply.done.wait(timeout_s)

    def close(self) -> bool:
        """Commit everything queued, stop the writer thread and close the database.

        Returns False if the writer did not finish within `close_timeout_s`.
        Records submitted after close are written synchronously by their caller.
        """
        with self._cond:
            if self._closed:
                return not self._worker.running
            self._closed = True
            self._cond.notify_all()
        ended = self._worker.stop(timeout_s=self.settings.close_timeout_s)
        if ended and self._worker.error is not None:
            # The writer crashed (a bug): what it left in the queue is written here.
            self._write_leftovers_sync()
        return ended

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> RecordsStatus:
        with self._cond:
            queued = sum(item.is_record for item in self._pending)
            return RecordsStatus(
                path=str(self.path),
                running=self._worker.running,
                queued=queued,
                max_queued=self._max_queued,
                written=self._counters["written"],
                written_sync=self._counters["written_sync"],
                waited=self._counters["waited"],
                write_errors=self._counters["write_errors"],
                lost=self._counters["lost"],
                last_error=self._last_error,
            )

    # ------------------------------------------------------------------ public reads

    def query_verdicts(
        self,
        *,
        since: TimeArg = None,
        until: TimeArg = None,
        limit: int | None = 1000,
        result: Result | None = None,
    ) -> list[VerdictRecord]:
        """See `RecordsReader.query_verdicts` (committed records only: `flush()` first to see all)."""
        return self.reader.query_verdicts(since=since, until=until, limit=limit, result=result)

    def counts(self, *, since: TimeArg = None, until: TimeArg = None) -> dict[str, int]:
        """See `RecordsReader.counts`."""
        return self.reader.counts(since=since, until=until)

    def alarms(self, *, active_only: bool = False, limit: int | None = 1000) -> list[AlarmRecord]:
        """See `RecordsReader.alarms`."""
        return self.reader.alarms(active_only=active_only, limit=limit)

    def actions(self, *, since: TimeArg = None, limit: int | None = 1000) -> list[ActionRecord]:
        """See `RecordsReader.actions`."""
        return self.reader.actions(since=since, limit=limit)

    # ------------------------------------------------------------------ the queue

    def _submit(self, item: _Item) -> None:
        """Queue an item; wait for room up to block_timeout_ms, then write it synchronously."""
        item.queued_at_s = time.monotonic()
        deadline = item.queued_at_s + self.settings.block_timeout_ms / 1000.0
        waited = False
        with self._cond:
            while not self._closed and self._worker.running:
                if len(self._pending) - self._flushes < self.settings.queue_size:
                    self._pending.append(item)
                    depth = len(self._pending)
                    self._max_queued = max(self._max_queued, depth - self._flushes)
                    # Wake the writer only when it may be waiting for this: the first item, a full batch.
                    full = min(self.settings.batch_size, self.settings.queue_size)
                    if depth == 1 or depth - self._flushes >= full or item.reply:
                        self._cond.notify_all()
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not waited:
                    waited = True
                    self._counters["waited"] += 1
                self._cond.wait(remaining)
        self._write_sync([item])

    def _write_sync(self, items: Sequence[_Item]) -> None:
        """Write items on the caller's thread, on a connection of its own."""
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self.settings.busy_timeout_ms / 1000
            )
            try:
                _configure(conn, busy_timeout_ms=self.settings.busy_timeout_ms)
                values = _apply_batch(conn, items)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            with self._cond:
                self._counters["write_errors"] += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
            raise RecordsError(
                f"records database {self.path} cannot be written ({exc}); free disk space or check the disk"
            ) from exc
        with self._cond:
            self._counters["written_sync"] += sum(item.is_record for item in items)
        for item, value in zip(items, values, strict=True):
            if item.reply is not None:
                item.reply.value = value
                item.reply.done.set()

    def _take_batch(self, *, wait_s: float, stopping: bool) -> list[_Item]:
        """Up to batch_size items, after waiting up to flush_interval_ms for the batch to fill."""
        interval_s = self.settings.flush_interval_ms / 1000.0
        with self._cond:
            while True:
                final = self._closed or stopping
                if not self._pending:
                    if final:
                        return []
                    self._cond.wait(wait_s)
                    if not self._pending:
                        return []
                    continue
                depth = len(self._pending)
                # A full queue is committed at once: callers are waiting for room.
                if final or self._flushes or depth >= min(self.settings.batch_size, self.settings.queue_size):
                    break
                remaining = self._pending[0].queued_at_s + interval_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Item] = []
            while self._pending and len(batch) < self.settings.batch_size:
                item = self._pending.popleft()
                batch.append(item)
                if item.kind == "flush":
                    self._flushes -= 1
                    break
            self._cond.notify_all()  # callers waiting for room
            return batch

    # ------------------------------------------------------------------ the writer thread

    def _writer_step(self, worker: Worker) -> bool:
        batch = self._take_batch(wait_s=0.1, stopping=worker.stopping)
        if batch:
            self._commit(batch, worker=worker)
        elif self._closed or worker.stopping:
            return False
        else:
            self._prune_step()
        return True

    def _commit(self, batch: list[_Item], *, worker: Worker) -> None:
        """Commit a batch, retrying while the database fails; never silently drops it."""
        backoff_s = 0.1
        attempts = 0
        while True:
            attempts += 1
            try:
                values = _apply_batch(self._conn, batch)
                break
            except sqlite3.OperationalError as exc:
                # Locked, disk full, I/O error: transient or fixable by a person; keep the batch.
                with self._cond:
                    self._counters["write_errors"] += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    closing = self._closed or worker.stopping
                if closing and attempts >= 3:
                    self._give_up(batch, exc)
                    return
                if attempts == 1 or attempts % 50 == 0:
                    log.warning("records database %s: write failed (%s); retrying", self.path, exc)
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            except sqlite3.DatabaseError as exc:
                # One malformed item must not block the rest: write them one by one.
                log.error("records database %s: batch refused (%s); writing items one by one", self.path, exc)
                values = [self._commit_one(item) for item in batch]
                break
        with self._cond:
            self._counters["written"] += sum(item.is_record for item in batch)
        for item, value in zip(batch, values, strict=True):
            if item.reply is not None:
                item.reply.value = value
                item.reply.done.set()

    def _commit_one(self, item: _Item) -> Any:
        try:
            return _apply_batch(self._conn, [item])[0]
        except sqlite3.Error as exc:
            self._give_up([item], exc)
            return None

    def _give_up(self, items: Sequence[_Item], exc: BaseException) -> None:
        """Log records that cannot be stored, one line each, so they survive in the journal."""
        with self._cond:
            self._counters["lost"] += sum(item.is_record for item in items)
            self._last_error = f"{type(exc).__name__}: {exc}"
        for item in items:
            if item.is_record:
                log.error("records database %s: LOST %s %s (%s)", self.path, item.kind, item.params, exc)
            if item.reply is not None:
                item.reply.done.set()

    def _prune_step(self) -> None:
        """Delete one chunk of records older than retention_days, at most once an hour when done."""
        days = self.settings.retention_days
        now = time.monotonic()
        if days <= 0 or now < self._next_prune_s:
            return
        cutoff = time.time() - days * 86400.0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            deleted = self._conn.execute(
                "DELETE FROM verdicts WHERE id IN (SELECT id FROM verdicts WHERE decided_at < ? LIMIT ?)",
                (cutoff, _PRUNE_CHUNK),
            ).rowcount
            deleted += self._conn.execute(
                "DELETE FROM alarms WHERE raised_at < ? "
                "AND cleared_at IS NOT NULL AND acknowledged_at IS NOT NULL",
                (cutoff,),
            ).rowcount
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            log.warning("records database %s: pruning old records failed (%s)", self.path, exc)
            self._next_prune_s = now + 60.0
            return
        if deleted:
            log.info("records database %s: %d records older than %.1f days deleted", self.path, deleted, days)
        # A full chunk means more is left: go on at the next idle step.
        self._next_prune_s = now if deleted >= _PRUNE_CHUNK else now + _PRUNE_PERIOD_S

    def _writer_end(self) -> None:
        """On the writer thread: commit what is left, then close the connection."""
        try:
            while batch := self._take_batch(wait_s=0.0, stopping=True):
                self._commit(batch, worker=self._worker)
            with contextlib.suppress(sqlite3.Error):
                # Fold the WAL back into the file so a copied database file is complete.
                self._conn.execute("PRAGMA optimize")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    def _write_leftovers_sync(self) -> None:
        with self._cond:
            items = list(self._pending)
            self._pending.clear()
            self._flushes = 0
        if items:
            self._write_sync(items)
