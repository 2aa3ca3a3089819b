"""`aoi records export|summary` on a records database written by `Records`."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sqlite3
import time
from pathlib import Path

import pytest

from appliance.cli import records_cmd
from appliance.cli.records_cmd import parse_time
from appliance.errors import RecordsError
from appliance.records import Records, RecordsSettings
from drivers.verdict import Defect, Result, Verdict

HOUR = 3600.0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="aoi")
    sub = top.add_subparsers(dest="command")
    records_cmd.add_parser(sub, "records")
    return top


def run(*argv: str) -> int:
    args = parser().parse_args(["records", *argv])
    return int(args.func(args))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "aoi.sqlite3"
    with Records(RecordsSettings(path=path)) as rec:
        for i, result in enumerate([Result.OK, Result.OK, Result.NG, Result.UNINSPECTED, Result.NG]):
            defects = (
                (Defect(x=1, y=2, width=3, height=4, area_px=12, peak_score=3.0),)
                if result is Result.NG
                else ()
            )
            v = Verdict(
                frame_id=i,
                part_id=f"P{i}",
                timestamp_s=0.0,
                result=result,
                score=0.3 + i,
                defects=defects,
                wall_time_s=time.time(),
            )
            rec.add_verdict(v, bundle_id="b1", bundle_version="2", recipe="paper", image_path=f"/img/{i}.png")
        rec.raise_alarm("camera", severity="warning", message="frame timeout")
        rec.record_action("alice", "engineer", "threshold", {"from": 1.0, "to": 1.1})
    # Two of the verdicts were decided yesterday.
    yesterday = time.time() - 24 * HOUR
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE verdicts SET decided_at = ? WHERE frame_id IN (0, 1)", (yesterday,))
    conn.close()
    return path


def test_export_csv_to_file(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export.csv"
    assert run("export", "--db", str(db), "--since", "8h", "--format", "csv", "--out", str(out)) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["frame_id"] for r in rows] == ["2", "3", "4"]  # oldest first, yesterday left out
    assert (
        rows[0]["verdict"] == "NG" and rows[0]["image_path"] == "/img/2.png" and rows[0]["recipe"] == "paper"
    )
    assert json.loads(rows[0]["defects"])[0]["area_px"] == 12
    decided = dt.datetime.fromisoformat(rows[0]["decided_at"])
    assert decided.tzinfo is not None and abs(decided.timestamp() - time.time()) < 600
    assert "3 verdicts written to" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_export_jsonl_to_stdout_with_until(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    until = (dt.datetime.now() - dt.timedelta(hours=1)).isoformat(timespec="minutes")
    assert run("export", "--db", str(db), "--since", "2d", "--until", until, "--format", "jsonl") == 0
    lines = [json.loads(line) for line in io.StringIO(capsys.readouterr().out)]
    assert [r["frame_id"] for r in lines] == [0, 1]
    assert (
        lines[0]["verdict"] == "OK" and lines[0]["defects"] == [] and lines[0]["score"] == pytest.approx(0.3)
    )


def test_export_alarms_and_actions(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("export", "--db", str(db), "--since", "1h", "--table", "actions", "--format", "jsonl") == 0
    (action,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert action["user"] == "alice" and action["details"] == {"from": 1.0, "to": 1.1}
    assert run("export", "--db", str(db), "--since", "1h", "--table", "alarms") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["source"] == "camera" and rows[0]["raised_at"] and rows[0]["cleared_at"] == ""


def test_summary(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("summary", "--db", str(db)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {k: summary[k] for k in ("total", "ok", "ng", "uninspected")} == {
        "total": 5,
        "ok": 2,
        "ng": 2,
        "uninspected": 1,
    }
    assert summary["reject_rate"] == pytest.approx(0.6) and summary["since"] is None
    assert run("summary", "--db", str(db), "--since", "30m") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["total"], summary["ok"]) == (3, 0)


def test_bad_since_and_missing_db_are_one_line_errors(db: Path, tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="--since 'yesterday' is neither an ISO time"):
        run("summary", "--db", str(db), "--since", "yesterday")
    with pytest.raises(RecordsError, match=r"missing\.sqlite3 does not exist"):
        run("export", "--db", str(tmp_path / "missing.sqlite3"), "--since", "8h")
    with pytest.raises(RecordsError, match="is not after --since"):
        run("export", "--db", str(db), "--since", "1h", "--until", "2h")
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"PK\x03\x04 not a database at all")
    with pytest.raises(RecordsError, match="not an SQLite database"):
        run("summary", "--db", str(foreign))


def test_parse_time_forms() -> None:
    now = 1_800_000_000.0
    assert parse_time("90s", option="--since", now_s=now) == now - 90
    assert parse_time("30m", option="--since", now_s=now) == now - 1800
    assert parse_time("8h", option="--since", now_s=now) == now - 8 * HOUR
    assert parse_time("1.5d", option="--since", now_s=now) == now - 36 * HOUR
    assert parse_time("1w", option="--since", now_s=now) == now - 7 * 24 * HOUR
    assert parse_time("2026-11-23T08:00", option="--since") == dt.datetime(2026, 11, 23, 8, 0).timestamp()
    assert (
        parse_time("2026-11-23T08:00+00:00", option="--since")
        == dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC).timestamp()
    )
