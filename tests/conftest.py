"""Shared test fixtures: every test fails if it leaves threads, child processes
or sockets behind (as pymodbus does), and Qt runs offscreen."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _open_sockets() -> int:
    fd_dir = Path("/proc/self/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def _children() -> set[int]:
    try:
        text = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


# Threads that libraries start once per process and keep (not a leak of a test).
_PERSISTENT = ("pydevd", "QDBus", "Dummy-", "ThreadPoolExecutor-0", "asyncio_0", "tqdm_monitor")


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """Fail a test that leaves threads, child processes or sockets running."""
    threads_before = set(threading.enumerate())
    sockets_before = _open_sockets()
    children_before = _children()
    yield
    deadline = time.monotonic() + 3.0
    while True:
        extra = [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not t.name.startswith(_PERSISTENT)
        ]
        sockets = _open_sockets() - sockets_before
        children = _children() - children_before
        if (not extra and sockets <= 0 and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if extra:
        problems.append(f"threads left running: {[t.name for t in extra]}")
    if sockets > 0:
        problems.append(f"{sockets} socket(s) left open")
    if children:
        problems.append(f"child processes left running: {sorted(children)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets beside the checkout; tests that need them skip without."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def tiny_print_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, bundle): a 64 px synthetic print set in MVTec layout (12 train, 20 good and 6 `spot`
    test images with masks) and a tiny PatchCore bundle trained on it, once per test session."""
    from pipelines.datasets.synth import write_mvtec_dataset
    from pipelines.training import train_bundle

    root = tmp_path_factory.getbasetemp() / "aoi-tiny-print"
    write_mvtec_dataset(
        root / "data", product="print", width_px=64, height_px=64, n_train=12, n_test_good=20,
        n_test_per_defect=6, defects=["spot"], seed=3, progress=False, overwrite=True,
    )  # fmt: skip
    train_bundle(
        family="patchcore", data=root / "data", out=root / "bundle",
        overrides={"bank_size": 200, "max_patches": 5000}, limit=12, tile_px=64, overlap_px=0,
        progress=False, overwrite=True,
    )  # fmt: skip
    return root / "data", root / "bundle"
