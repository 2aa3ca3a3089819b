"""Fixtures of the station tests: a real line on the synthetic camera, its control endpoint, and
the station window on either, all offscreen (QT_QPA_PLATFORM=offscreen, set in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.archive import ArchiveSettings, ImageArchive
from appliance.config import ControlSettings, LineSettings
from appliance.control import ControlServer
from appliance.gui.pin import hash_pin
from appliance.gui.settings import GuiSettings
from appliance.line import Line
from appliance.records import Records, RecordsSettings
from drivers.camera.base import Frame
from drivers.camera.synthetic import SyntheticCamera, SyntheticSettings
from drivers.verdict import Defect
from tests.appliance.doubles import ThresholdInspectorForTests

TOKEN = "gui-test-token-0123456789"
PIN = "2468"
# One hash for the whole session: scrypt is slow on purpose.
PIN_HASH = hash_pin(PIN)


class DefectBoxInspectorForTests(ThresholdInspectorForTests):
    """The shared threshold double with one defect box (the truth mask's bounding box) sized in mm
    at 0.1 mm/px, so the station has scores, maps and labelled boxes to show."""

    mm_per_px = 0.1

    def __init__(self, *, name: str = "gui-double", delay_s: float = 0.0) -> None:
        super().__init__(name=name, delay_s=delay_s)

    def _mask(self, frame: Frame) -> np.ndarray | None:
        truth = frame.truth or {}
        mask = truth.get("mask")
        return mask if truth.get("defective") and mask is not None and mask.any() else None

    def anomaly_map(self, frame: Frame, raw: float) -> np.ndarray:
        amap = np.full(frame.pixels.shape[:2], raw * 0.3, np.float32)
        mask = self._mask(frame)
        if mask is not None:
            amap[mask > 0] = raw
        return amap

    def defects(self, frame: Frame, raw: float) -> tuple[Defect, ...]:
        mask = self._mask(frame)
        if mask is None:
            return ()
        ys, xs = np.nonzero(mask)
        x, y, w, h = int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1
        area = int((mask > 0).sum())
        return (Defect(x, y, w, h, area, raw, area_mm2=area * self.mm_per_px**2),)


def make_line(
    tmp_path: Path,
    *,
    parts: int | None = None,
    rate_hz: float = 40.0,
    delay_s: float = 0.0,
    deadline_ms: float = 5000.0,
) -> Line:
    cam = SyntheticCamera(
        SyntheticSettings(
            product="print",
            width_px=96,
            height_px=128,
            frame_rate_hz=rate_hz,
            seed=3,
            defect_rate=0.4,
            parts=parts,
        )
    )
    cam.open()
    return Line(
        camera=cam,
        inspector=DefectBoxInspectorForTests(delay_s=delay_s),
        records=Records(RecordsSettings(path=tmp_path / "records.sqlite3", flush_interval_ms=10)),
        archive=ImageArchive(ArchiveSettings(directory=tmp_path / "images", min_free_mb=0, quota_mb=0)),
        deadline_ms=deadline_ms,
        queue_size=4,
        # Display images of 24x32 px: the inspection view can load the full 96x128 px from the archive.
        settings=LineSettings(events_capacity=256, display_every_n=2, display_max_px=32, stop_timeout_s=5),
    )


@pytest.fixture
def gui_settings() -> GuiSettings:
    return GuiSettings(engineer_pin_hash=PIN_HASH, station="bench-1", status_interval_s=0.2, gallery_size=5)


@pytest.fixture
def line_factory(tmp_path: Path) -> Iterator[Callable[..., Line]]:
    """Builds started lines (kwargs of `make_line`) and stops every one at the end of the test."""
    lines: list[Line] = []

    def build(**kwargs: object) -> Line:
        line = make_line(tmp_path, **kwargs)  # type: ignore[arg-type]
        lines.append(line)
        line.start()
        return line

    yield build
    for line in lines:
        line.stop()


@pytest.fixture
def control_for() -> Iterator[Callable[[Line], ControlServer]]:
    """A control endpoint on 127.0.0.1 (any free port) for a line; stopped at the end of the test."""
    servers: list[ControlServer] = []

    def serve(line: Line) -> ControlServer:
        server = ControlServer(
            line, ControlSettings(port=0, token=TOKEN, keepalive_s=0.5), data_dir=Path("/nonexistent")
        )
        server.start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def station_for(
    qtbot: object, line_factory: object, control_for: object, gui_settings: GuiSettings
) -> Iterator[Callable[..., object]]:
    """Station windows for sources; shut down (threads joined) before the lines and servers stop."""
    from appliance.gui.window import StationWindow

    windows: list[StationWindow] = []

    def open_station(source: object, settings: GuiSettings | None = None, **kwargs: object) -> StationWindow:
        window = StationWindow(source, settings or gui_settings, **kwargs)  # type: ignore[arg-type]
        qtbot.addWidget(window)  # type: ignore[attr-defined]
        windows.append(window)
        return window

    yield open_station
    for window in windows:
        window.shutdown()
