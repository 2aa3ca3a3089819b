"""The control and event endpoint over 127.0.0.1 with urllib: token, status, SSE events,
pause/resume/threshold/bundle taking effect and audit-logged, loopback-only binds."""

from __future__ import annotations

import base64
import json
import logging
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.archive import ArchiveSettings, ImageArchive
from appliance.config import ControlSettings, LineSettings
from appliance.control import ControlServer, resolve_token
from appliance.errors import ConfigError
from appliance.line import Line
from appliance.records import Records, RecordsReader, RecordsSettings
from pipelines.errors import BundleError
from tests.appliance.doubles import ThresholdInspectorForTests, synthetic_camera, wait_until

TOKEN = "test-token-0123456789abcdef"


def factory(path: Path) -> ThresholdInspectorForTests:
    if not path.name.startswith("bundle-"):
        raise BundleError(f"bundle {path} does not exist: train one with 'aoi train --out {path}'")
    return ThresholdInspectorForTests(name=path.name)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Line, ControlServer]]:
    cam = synthetic_camera(rate_hz=60)
    cam.open()
    line = Line(
        camera=cam,
        inspector=ThresholdInspectorForTests(),
        records=Records(RecordsSettings(path=tmp_path / "records.sqlite3", flush_interval_ms=10)),
        archive=ImageArchive(ArchiveSettings(directory=tmp_path / "images", min_free_mb=0, quota_mb=0)),
        deadline_ms=5000,
        queue_size=4,
        settings=LineSettings(events_capacity=64, display_every_n=3, stop_timeout_s=5),
        inspector_factory=factory,
    )
    line.start()
    control = ControlServer(line, ControlSettings(port=0, token=TOKEN, keepalive_s=0.5), data_dir=tmp_path)
    control.start()
    try:
        yield line, control
    finally:
        control.stop()
        line.stop()


def request(
    control: ControlServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = TOKEN,
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(control.url + path, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def read_events(control: ControlServer, *, until: Callable[[list[tuple[str, dict[str, Any]]]], bool],
                headers: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(event, data) pairs from GET /events until `until` holds (or 10 s pass)."""
    req = urllib.request.Request(
        control.url + "/events", headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})}
    )
    events: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + 10
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        kind = ""
        while not until(events) and time.monotonic() < deadline:
            line = response.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def test_every_endpoint_needs_the_token(served: tuple[Line, ControlServer]) -> None:
    _, control = served
    for method, path in (("GET", "/status"), ("GET", "/events"), ("POST", "/pause"), ("POST", "/threshold")):
        assert request(control, method, path, token=None)[0] == 401
        assert request(control, method, path, token="wrong-token-wrong-token")[0] == 401
    code, body = request(control, "GET", "/nothing-here")
    assert code == 404 and "/status" in body["endpoints"]
    assert control.status()["control"]["unauthorised"] == 8
    assert not served[0].paused


def test_status_reports_counters_parts_and_alarms(served: tuple[Line, ControlServer]) -> None:
    line, control = served
    wait_until(lambda: line.status().frames >= 5, timeout_s=10, what="verdicts")
    code, status = request(control, "GET", "/status")
    assert code == 200
    assert status["frames"] >= 5 and status["frames"] == status["ok"] + status["ng"] + status["uninspected"]
    assert status["camera"]["state"] == "streaming" and status["records"]["running"] is True
    assert status["bundle_id"].startswith("threshold-double") and status["image_threshold"] == 1.0
    assert status["alarms"] == [] and status["paused"] is False and status["outputs"] == []
    assert status["latency_ms_p50"] is not None


def test_events_stream_verdicts_with_display_images(served: tuple[Line, ControlServer]) -> None:
    _, control = served
    events = read_events(
        control, until=lambda ev: sum(k == "verdict" and "image_jpeg_b64" in d for k, d in ev) >= 2
    )
    verdicts = [d for k, d in events if k == "verdict"]
    assert len(verdicts) >= 2
    first = verdicts[0]
    assert {"frame_id", "part_id", "verdict", "score", "defects", "latency_ms", "seq"} <= set(first)
    with_image = next(d for d in verdicts if "image_jpeg_b64" in d)
    assert base64.b64decode(with_image["image_jpeg_b64"])[:2] == b"\xff\xd8"
    assert base64.b64decode(with_image["heatmap_jpeg_b64"])[:2] == b"\xff\xd8"
    ids = [d["frame_id"] for d in verdicts]
    assert ids == sorted(ids)
    # The stream's thread ends when the client goes away (the leak check would fail otherwise).
    wait_until(lambda: control.status()["control"]["event_clients"] == 0, timeout_s=5, what="client gone")


def test_a_lagging_client_gets_a_gap_and_no_images(served: tuple[Line, ControlServer]) -> None:
    line, control = served
    line.events.subscribe()  # a consumer from the start, so events carry display images
    try:
        wait_until(lambda: line.events.last_seq > 100, timeout_s=15, what="more events than the ring holds")
        events = read_events(control, headers={"Last-Event-ID": "1"}, until=lambda ev: len(ev) >= 20)
    finally:
        line.events.unsubscribe()
    assert events[0][0] == "gap" and events[0][1]["missed"] > 0
    old = [d for k, d in events[1:10] if k == "verdict"]
    assert old and all("image_jpeg_b64" not in d for d in old)
    assert any(d.get("display_dropped") for d in old)


def test_pause_resume_and_threshold_take_effect_and_are_audited(served: tuple[Line, ControlServer]) -> None:
    line, control = served
    assert request(control, "POST", "/pause", {"user": "dave", "role": "operator"}) == (200, {"paused": True})
    assert request(control, "GET", "/status")[1]["paused"] is True
    wait_until(lambda: line.status().uninspected_by_reason.get("paused", 0) >= 3, timeout_s=10, what="paused")
    assert request(control, "POST", "/resume", {"user": "dave"}) == (200, {"paused": False})
    code, body = request(
        control, "POST", "/threshold", {"image_threshold": 2.0, "user": "erin", "role": "engineer"}
    )
    assert code == 200 and body == {"image_threshold": 2.0, "previous": 1.0}
    assert line.image_threshold == 2.0 and request(control, "GET", "/status")[1]["image_threshold"] == 2.0
    for bad in ({"image_threshold": "high"}, {"image_threshold": -1}, {}):
        code, body = request(control, "POST", "/threshold", bad)
        assert code == 400 and body["error"]
    line.records.flush()
    actions = [(a.action, a.user, a.role) for a in reversed(RecordsReader(line.records.path).actions())]
    assert actions == [("pause", "dave", "operator"), ("resume", "dave", "operator"),
                       ("set_threshold", "erin", "engineer")]  # fmt: skip


def test_bundle_switch_over_http(served: tuple[Line, ControlServer], tmp_path: Path) -> None:
    line, control = served
    code, body = request(control, "POST", "/bundle", {"path": str(tmp_path / "missing"), "user": "fay"})
    assert code == 400 and "does not exist" in body["error"]
    code, body = request(control, "POST", "/bundle", {"path": str(tmp_path / "bundle-b"), "user": "fay"})
    assert code == 200 and body["bundle_id"].startswith("bundle-b")
    assert line.bundle_id == body["bundle_id"]
    assert request(control, "POST", "/bundle", {"user": "fay"})[0] == 400
    line.records.flush()
    actions = [a.action for a in reversed(RecordsReader(line.records.path).actions())]
    assert actions == ["switch_bundle_failed", "switch_bundle"]


def test_non_loopback_binds_are_refused_unless_allowed(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="allow_remote"):
        ControlSettings(host="0.0.0.0")
    with pytest.raises(ValidationError, match="not an IP address"):
        ControlSettings(host="appliance.example", allow_remote=True)
    assert ControlSettings(host="::1").host == "::1"
    bypassed = ControlSettings.model_construct(host="10.0.0.5", allow_remote=False, token=TOKEN)
    with pytest.raises(ConfigError, match="loopback"):
        ControlServer(None, bypassed, data_dir=tmp_path)  # type: ignore[arg-type]
    allowed = ControlSettings(host="10.0.0.5", allow_remote=True, token=TOKEN)
    with caplog.at_level(logging.WARNING):
        ControlServer(None, allowed, data_dir=tmp_path)  # type: ignore[arg-type]
    assert "not loopback" in caplog.text


def test_token_file_is_created_private_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = ControlSettings()
    token = resolve_token(settings, data_dir=tmp_path / "data")
    path = tmp_path / "data" / "control.token"
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_token(settings, data_dir=tmp_path / "data") == token
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert resolve_token(settings, data_dir=tmp_path / "data") == token
    assert "chmod 600" in caplog.text
    assert resolve_token(ControlSettings(token=TOKEN), data_dir=tmp_path / "other") == TOKEN
    assert not (tmp_path / "other").exists()
