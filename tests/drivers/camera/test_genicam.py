"""GenICam camera against the viky.cti simulator from the genicam wheel (no network).

viky exposes Width/Height (100..800), PixelFormat (RGBa8, Mono8,
Coord3D_ABC32f_Planar), AcquisitionFrameRate (1..200 Hz) and no exposure,
gain, offset or trigger features, which the error tests use.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("harvesters.core")
genicam = pytest.importorskip("genicam")

from drivers.camera.base import FrameTimeoutError  # noqa: E402
from drivers.camera.genicam import GenICamCamera, GenICamSettings, list_devices  # noqa: E402
from drivers.errors import CameraError  # noqa: E402

pytestmark = pytest.mark.camera

VIKY = Path(genicam.__file__).parent / "viky.cti"
if not VIKY.is_file():
    pytest.skip(f"viky.cti simulator not found at {VIKY}", allow_module_level=True)


def _settings(**kw: object) -> GenICamSettings:
    base: dict[str, object] = {"cti_path": VIKY, "width_px": 320, "height_px": 240, "pixel_format": "Mono8"}
    base.update(kw)
    return GenICamSettings.model_validate(base)


def test_enumerate_devices() -> None:
    devices = list_devices(cti_path=VIKY)
    assert len(devices) >= 1
    assert devices[0]["index"] == 0 and devices[0]["model"] == "Viky"
    assert {"serial_number", "user_defined_name", "vendor", "id"} <= set(devices[0])


def test_open_configure_grab_stop_close_reopen() -> None:
    handler_before = signal.getsignal(signal.SIGINT)
    cam = GenICamCamera(_settings(frame_rate_hz=100.0))
    cam.open()
    try:
        # harvesters would swap the SIGINT handler; the camera puts it back.
        assert signal.getsignal(signal.SIGINT) is handler_before
        assert cam.status.state == "open"
        assert cam.get_feature("Width") == 320 and cam.get_feature("Height") == 240
        assert cam.get_feature("PixelFormat") == "Mono8"
        assert {"Width", "Height", "PixelFormat", "AcquisitionFrameRate"} <= set(cam.feature_names())
        cam.start()
        assert cam.status.state == "streaming"
        kept = []
        for _ in range(5):
            with cam.frame(timeout_s=2.0) as frame:
                assert frame.pixels.shape == (240, 320) and frame.pixels.dtype == np.uint8
                # A view of the producer's buffer: read-only, valid in the block.
                assert not frame.pixels.flags.writeable
                kept.append(frame.detach())
        assert [f.frame_id for f in kept] == [0, 1, 2, 3, 4]
        assert kept[0].pixels.flags.writeable and kept[0].part_id == "P000000"
        assert cam.status.frames_delivered == 5
        cam.stop()
        assert cam.status.state == "open"
        cam.set_feature("PixelFormat", "RGBa8")
        cam.start()
        with cam.frame(timeout_s=2.0) as frame:
            assert frame.pixels.shape == (240, 320, 3) and frame.pixels.dtype == np.uint8
        cam.stop()
    finally:
        cam.close()
    cam.close()
    assert cam.status.state == "closed"

    with GenICamCamera(_settings(device_index=1, width_px=160, height_px=120)) as again:
        again.start()
        with again.frame(timeout_s=2.0) as frame:
            assert frame.pixels.shape == (120, 160)
        assert again.device["serial_number"] == "1"


def test_select_by_serial_and_bad_selectors() -> None:
    with GenICamCamera(_settings(serial_number="2")) as cam:
        assert cam.device["serial_number"] == "2"
    with pytest.raises(CameraError, match=r"serial_number='nope'.*found: #0"):
        GenICamCamera(_settings(serial_number="nope")).open()
    with pytest.raises(CameraError, match="index 9 not found"):
        GenICamCamera(_settings(device_index=9)).open()
    with pytest.raises(ValueError, match="not both"):
        _settings(serial_number="1", user_defined_name="cam")


def test_feature_errors_name_the_feature(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no feature 'ExposureTime'"):
        GenICamCamera(_settings(exposure_us=500.0)).open()
    with pytest.raises(CameraError, match=r"refused Width=5000 .*100 .. 800"):
        GenICamCamera(_settings(width_px=5000)).open()
    with pytest.raises(CameraError, match=r"refused PixelFormat='BayerRG8'.*allowed: .*Mono8"):
        GenICamCamera(_settings(pixel_format="BayerRG8")).open()
    with pytest.raises(CameraError, match="no feature 'TriggerMode'"):
        GenICamCamera(_settings(trigger_mode="software")).open()
    with GenICamCamera(_settings(features={"BouncingBallSize": 10})) as cam:
        assert cam.get_feature("BouncingBallSize") == 10
        with pytest.raises(CameraError, match="no feature 'Widht'; close names it has: Width"):
            cam.set_feature("Widht", 100)
        with pytest.raises(CameraError, match="PayloadSize is read-only"):
            cam.set_feature("PayloadSize", 1)
    with pytest.raises(CameraError, match=r"not found: set camera.cti_path"):
        GenICamCamera(_settings(cti_path=tmp_path / "missing.cti")).open()


def test_camera_disappears_and_comes_back(tmp_path: Path) -> None:
    """Loss: the harvester is reset underneath the camera and the producer file
    vanishes, so reconnect tries fail with growing waits until it is back."""
    cti = tmp_path / "viky.cti"
    shutil.copy(VIKY, cti)
    settings = _settings(cti_path=cti, reconnect_initial_s=0.05, reconnect_max_s=0.2)
    cam = GenICamCamera(settings)
    cam.open()
    try:
        cam.set_feature("BouncingBallSize", 7)  # a run-time value must survive the reconnect
        cam.start()
        with cam.frame(timeout_s=2.0):
            pass
        cam._harvester.reset()  # the device goes away underneath the camera
        hidden = cti.rename(tmp_path / "hidden.cti")
        with pytest.raises(CameraError, match="reconnecting"), cam.frame(timeout_s=0.5):
            pass
        assert cam.status.state == "reconnecting"
        errors = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with pytest.raises(CameraError), cam.frame(timeout_s=0.1):
                pass
            errors += 1
        assert cam.status.state == "reconnecting"
        assert cam.reconnect_attempts >= 3 and cam.status.reconnects == 0
        assert "not found" in cam.status.last_error
        assert cam._reconnect_wait_s == pytest.approx(0.2)  # doubled up to reconnect_max_s
        hidden.rename(cti)
        frame_ok = False
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not frame_ok:
            try:
                with cam.frame(timeout_s=0.5) as frame:
                    frame_ok = frame.pixels.shape == (240, 320)
            except CameraError:
                continue
        assert frame_ok
        assert cam.status.state == "streaming" and cam.status.reconnects == 1
        assert cam.get_feature("BouncingBallSize") == 7
    finally:
        cam.close()


def test_triggered_timeout_is_not_a_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """viky has no trigger features: the camera streams free-running and is then
    told it is hardware-triggered, with fetches that find no frame."""
    cam = GenICamCamera(_settings(lost_after_s=0.3))
    cam.open()
    try:
        cam.start()
        cam.settings = cam.settings.model_copy(update={"trigger_mode": "hardware"})
        monkeypatch.setattr(cam, "_fetch", lambda ia, *, timeout_s: None)
        for _ in range(5):
            with pytest.raises(FrameTimeoutError, match="no trigger"), cam.frame(timeout_s=0.01):
                pass
        assert cam.status.state == "streaming"
        # Free-running, short timeouts are tolerated, lasting silence is a loss.
        cam.settings = cam.settings.model_copy(update={"trigger_mode": "free_run"})
        with pytest.raises(FrameTimeoutError), cam.frame(timeout_s=0.01):
            pass
        assert cam.status.state == "streaming"
        time.sleep(0.3)
        with pytest.raises(FrameTimeoutError, match="reconnecting"), cam.frame(timeout_s=0.01):
            pass
        assert cam.status.state == "reconnecting"
    finally:
        cam.close()
