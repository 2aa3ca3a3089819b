"""The records database: every verdict exactly once, WAL, schema checks, counts, alarms, audit."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import RecordsError
from appliance.records import SCHEMA_VERSION, Records, RecordsReader, RecordsSettings
from drivers.verdict import Defect, Result, Verdict


def verdict(
    frame_id: int,
    result: Result = Result.OK,
    *,
    score: float = 0.4,
    defects: tuple[Defect, ...] = (),
    latency_ms: float = float("nan"),
    reason: str = "",
) -> Verdict:
    return Verdict(
        frame_id=frame_id,
        part_id=f"P{frame_id}",
        timestamp_s=time.monotonic(),
        result=result,
        score=score,
        defects=defects,
        latency_ms=latency_ms,
        reason=reason,
        wall_time_s=time.time(),
    )


def add(records: Records, v: Verdict) -> None:
    records.add_verdict(v, bundle_id="bundle-a", bundle_version="3", recipe="paper")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records" / "aoi.sqlite3"


@pytest.fixture
def records(db: Path) -> Iterator[Records]:
    rec = Records(RecordsSettings(path=db, flush_interval_ms=20.0))
    try:
        yield rec
    finally:
        rec.close()


def _produce(records: Records, *, first: int, n: int) -> None:
    for i in range(first, first + n):
        add(records, verdict(i, Result.NG if i % 7 == 0 else Result.OK))


def _frame_ids(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT frame_id FROM verdicts")]


def test_two_threads_every_verdict_exactly_once(db: Path) -> None:
    n = 3000
    rec = Records(RecordsSettings(path=db, queue_size=500, batch_size=200, flush_interval_ms=5.0))
    try:
        threads = [
            threading.Thread(target=_produce, args=(rec,), kwargs={"first": k * n, "n": n}) for k in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert rec.flush(10.0)
        status = rec.status()
        assert status.written + status.written_sync == 2 * n and status.lost == 0
    finally:
        rec.close()
    ids = _frame_ids(db)
    assert len(ids) == 2 * n and set(ids) == set(range(2 * n))


def test_full_queue_caller_writes_itself_and_nothing_is_lost(db: Path) -> None:
    # A one-record queue and no patience: most callers must write synchronously.
    rec = Records(RecordsSettings(path=db, queue_size=1, block_timeout_ms=0.0, flush_interval_ms=50.0))
    try:
        threads = [
            threading.Thread(target=_produce, args=(rec,), kwargs={"first": k * 150, "n": 150})
            for k in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert rec.flush(5.0)
        status = rec.status()
        assert status.written_sync > 0
        assert status.written + status.written_sync == 300
    finally:
        rec.close()
    assert sorted(_frame_ids(db)) == list(range(300))


def test_close_flushes_and_stops_the_thread_and_reopen_keeps_everything(db: Path) -> None:
    # A long flush interval: without close() nothing would be committed yet.
    rec = Records(RecordsSettings(path=db, flush_interval_ms=60_000.0, batch_size=10_000))
    for i in range(500):
        add(rec, verdict(i))
    rec.record_action("alice", "engineer", "load_recipe", {"recipe": "paper"})
    assert rec.close()
    assert not [t for t in threading.enumerate() if t.name == "records-writer"]
    assert rec.close()  # twice is harmless

    again = Records(RecordsSettings(path=db))
    try:
        assert again.counts()["total"] == 500
        add(again, verdict(500))
        assert again.flush(5.0)
        assert again.counts()["total"] == 501
        assert again.actions()[0].details == {"recipe": "paper"}
    finally:
        again.close()


def test_wal_mode_and_schema_version(records: Records, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"verdicts", "alarms", "operator_actions", "schema_version"} <= tables


def test_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "random.db"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(RecordsError, match=r"random\.db is not an SQLite database.*move it aside"):
        Records(RecordsSettings(path=path))
    with pytest.raises(RecordsError, match="not an SQLite database"):
        RecordsReader(path)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    with pytest.raises(RecordsError, match=r"other\.sqlite belongs to another program.*customers"):
        Records(RecordsSettings(path=path))


def test_newer_schema_is_refused(records: Records, db: Path) -> None:
    records.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(RecordsError, match="schema version 99, newer"):
        Records(RecordsSettings(path=db))


def test_reader_on_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match=r"nope\.sqlite3 does not exist"):
        RecordsReader(tmp_path / "nope.sqlite3")


def test_counts_and_queries(records: Records) -> None:
    t0 = time.time()
    results = [Result.OK] * 5 + [Result.NG] * 3 + [Result.UNINSPECTED] * 2
    defect = Defect(x=1, y=2, width=3, height=4, area_px=10, peak_score=float("nan"), area_mm2=0.5)
    for i, result in enumerate(results):
        v = verdict(i, result, score=float("nan") if result is Result.UNINSPECTED else 1.5, latency_ms=12.5)
        if result is Result.NG:
            v = verdict(i, result, score=1.5, defects=(defect,), reason="blob")
        records.add_verdict(
            v, bundle_id="b", bundle_version="1", recipe="r", image_path=f"/img/{i}.png" if i == 5 else None
        )
    assert records.flush(5.0)
    assert records.counts() == {"total": 10, "ok": 5, "ng": 3, "uninspected": 2}
    assert records.counts(since=time.time() + 10)["total"] == 0
    assert records.counts(since=t0 - 1, until=time.time() + 1)["total"] == 10

    latest = records.query_verdicts(limit=3)
    assert [v.frame_id for v in latest] == [9, 8, 7]
    ng = records.query_verdicts(result=Result.NG)
    assert [v.frame_id for v in ng] == [7, 6, 5]
    first_ng = ng[-1]
    assert first_ng.defects[0]["area_px"] == 10 and first_ng.defects[0]["peak_score"] is None
    assert first_ng.image_path == "/img/5.png" and first_ng.heatmap_path is None
    assert first_ng.reason == "blob" and first_ng.recipe == "r" and first_ng.bundle_version == "1"
    uninspected = records.query_verdicts(result=Result.UNINSPECTED, limit=1)[0]
    assert uninspected.score is None and uninspected.latency_ms == 12.5
    assert uninspected.acquired_at is not None and uninspected.decided_at >= uninspected.acquired_at
    assert not math.isnan(first_ng.decided_at)


def test_alarms_lifecycle_and_acknowledge_is_audited(records: Records) -> None:
    records.raise_alarm("archive", severity="error", message="disk full")
    records.raise_alarm("archive", severity="error", message="disk full")  # repeated: no new row
    records.raise_alarm("camera", severity="warning", message="frame timeout")
    assert records.flush(5.0)
    active = records.alarms(active_only=True)
    assert sorted(a.source for a in active) == ["archive", "camera"]

    records.raise_alarm("camera", severity="error", message="camera lost")  # replaces the old one
    records.clear_alarm("archive")
    records.clear_alarm("plc")  # never raised: no-op
    assert records.flush(5.0)
    active = records.alarms(active_only=True)
    assert [(a.source, a.message) for a in active] == [("camera", "camera lost")]
    assert len(records.alarms()) == 3

    archive_alarm = next(a for a in records.alarms() if a.source == "archive")
    assert records.acknowledge_alarm(archive_alarm.id, user="bob") is True
    assert records.acknowledge_alarm(archive_alarm.id, user="bob") is False
    with pytest.raises(RecordsError, match="alarm 9999 does not exist"):
        records.acknowledge_alarm(9999, user="bob")
    acked = next(a for a in records.alarms() if a.id == archive_alarm.id)
    assert acked.acknowledged_by == "bob" and acked.acknowledged_at is not None and not acked.active
    audit = records.actions()
    assert [(a.user, a.role, a.action) for a in audit] == [("bob", "operator", "acknowledge_alarm")]
    assert audit[0].details == {"alarm_id": archive_alarm.id, "source": "archive", "message": "disk full"}
    with pytest.raises(ValueError, match="severity"):
        records.raise_alarm("x", severity="fatal", message="m")  # type: ignore[arg-type]


def test_alarms_of_a_previous_run_are_cleared_at_start(db: Path) -> None:
    with Records(RecordsSettings(path=db)) as rec:
        rec.raise_alarm("plc", severity="error", message="PLC unreachable")
    with Records(RecordsSettings(path=db)) as rec:
        assert rec.alarms(active_only=True) == []
        (alarm,) = rec.alarms()
        assert alarm.cleared_at is not None and alarm.acknowledged_at is None


def test_retention_deletes_old_verdicts_but_keeps_the_audit_log(db: Path) -> None:
    with Records(RecordsSettings(path=db)) as rec:
        add(rec, verdict(1))
        rec.record_action("alice", "admin", "login")
    old = time.time() - 10 * 86400
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE verdicts SET decided_at = ?", (old,))
        conn.execute("UPDATE operator_actions SET time = ?", (old,))
    conn.close()
    with Records(RecordsSettings(path=db, retention_days=2.0)) as rec:
        add(rec, verdict(2))
        assert rec.flush(5.0)
        deadline = time.monotonic() + 5.0
        while len(rec.query_verdicts()) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # pruning runs when the writer is idle
        assert [v.frame_id for v in rec.query_verdicts()] == [2]
        assert len(rec.actions()) == 1


def test_records_after_close_are_written_synchronously(records: Records, db: Path) -> None:
    records.close()
    add(records, verdict(42))
    assert records.status().written_sync == 1
    assert _frame_ids(db) == [42]


def test_reader_sees_committed_rows_while_the_writer_runs(records: Records, db: Path) -> None:
    add(records, verdict(1, Result.NG))
    assert records.flush(5.0)
    reader = RecordsReader(db)
    assert reader.counts()["ng"] == 1
    rows = list(reader.iter_verdicts())
    assert rows[0].to_dict()["part_id"] == "P1"
    assert json.loads(json.dumps(rows[0].to_dict()))["verdict"] == "NG"


def test_a_locked_database_is_retried_and_refused_loudly_when_the_caller_must_write(db: Path) -> None:
    rec = Records(RecordsSettings(path=db, busy_timeout_ms=20, queue_size=3, block_timeout_ms=0.0))
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        for i in range(3):
            add(rec, verdict(i))
        deadline = time.monotonic() + 5.0
        while rec.status().write_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.status().write_errors > 0 and "locked" in rec.status().last_error
        for i in range(3, 10):  # the queue fills up; the caller's own write then fails too
            try:
                add(rec, verdict(i))
            except RecordsError as exc:
                assert "cannot be written" in str(exc) and str(db) in str(exc)
                break
        else:
            pytest.fail("a caller that cannot store its record must be told")
        blocker.execute("COMMIT")
        assert rec.flush(5.0)
    finally:
        blocker.close()
        rec.close()
    assert set(range(3)) <= set(_frame_ids(db))
    assert rec.status().lost == 0
