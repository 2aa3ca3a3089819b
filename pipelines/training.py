"""Training shared by every family: data, crops, held-out split, bundle writing.

A family's `train.py` exposes `PROFILES` (name -> dict of settings) and
`fit(images, *, settings, seed, progress) -> Fitted`; this module does the
rest the same way for all of them: reads `train/good`, holds out good images
for map statistics and the first threshold, fingerprints the data, and writes
the bundle atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.bundle import (
    BundleMeta,
    Calibration,
    TileSpec,
    fingerprint_files,
    library_versions,
    now_iso,
    write_bundle,
)
from pipelines.data import read_image, train_images
from pipelines.errors import DataError, ModelError
from pipelines.models.registry import training_module

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Fitted:
    """What a family's `fit` returns."""

    params: dict[str, Any]
    tensors: dict[str, np.ndarray]
    info: dict[str, Any]
    input_channels: int = 3  # 6: the tile and the reference frame's tile (tensor "reference_frame")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MARGIN_PX = TileSpec().margin_px


class TrainLoop:
    """The iterations of one training phase: progress bar, running losses, time limit.

    `for i in loop:` yields 0, 1, ... until `iterations` are done or the clock
    (time.monotonic) has passed `deadline`, checked after each iteration so at
    least one runs; `iterations=None` trains until the deadline (a time
    budget). In the body, `loop.step(opt, loss)` does the optimiser step and
    records the loss; other terms to watch go in as keywords.
    """

    def __init__(
        self,
        name: str,
        *,
        iterations: int | None,
        deadline: float,
        progress: bool,
        every: int = 50,
    ) -> None:
        self.name = name
        self.iterations = iterations
        self.deadline = deadline
        self.progress = progress
        self.every = every
        self.done = 0
        self.stopped_by_time = False
        self.history: dict[str, list[float]] = {"loss": []}

    def __iter__(self) -> Iterator[int]:
        from tqdm import tqdm

        with tqdm(
            total=self.iterations, desc=self.name, disable=not self.progress, unit="it", mininterval=2
        ) as bar:
            while self.iterations is None or self.done < self.iterations:
                yield self.done
                self.done += 1
                bar.update(1)
                if self.done % self.every == 0:
                    bar.set_postfix({k: f"{self.recent(k):.4f}" for k in self.history if self.history[k]})
                if time.monotonic() > self.deadline:
                    if self.iterations is not None:
                        self.stopped_by_time = True
                        log.warning(
                            "%s stopped at the time limit after %d of %d iterations",
                            self.name,
                            self.done,
                            self.iterations,
                        )
                    break

    def step(
        self,
        opt: torch.optim.Optimizer,
        loss: torch.Tensor,
        sched: torch.optim.lr_scheduler.LRScheduler | None = None,
        **terms: torch.Tensor | float,
    ) -> None:
        """Backward, optimiser (and scheduler) step; record `loss` and the named `terms`."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        self.record(loss=float(loss.item()), **terms)

    def record(self, **terms: torch.Tensor | float) -> None:
        for k, v in terms.items():
            self.history.setdefault(k, []).append(float(v.item() if isinstance(v, torch.Tensor) else v))

    def recent(self, key: str = "loss") -> float:
        """Mean of the last `every` values of `key` (nan before any)."""
        values = self.history.get(key) or []
        return float(np.mean(values[-self.every :])) if values else float("nan")

    def final(self, key: str = "loss") -> float | None:
        """`recent(key)` for the bundle's training info, None when nothing ran."""
        return self.recent(key) if self.history.get(key) else None


def with_margin(img: np.ndarray, margin_px: int = MARGIN_PX) -> np.ndarray:
    """The image reflect-padded by `margin_px` on every side, as inference pads a frame before tiling.

    Training, the held-out statistics and the first threshold all see frames this
    way, so a frame's border (mirrored content within the margin) is normal to
    the model rather than a false peak on every good part."""
    if margin_px <= 0:
        return img
    pad = ((margin_px, margin_px), (margin_px, margin_px)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="reflect" if min(img.shape[:2]) > margin_px else "edge")


class CropSampler:
    """Random square crops (multiples of 32) from images of any size, reflect-padded if small.

    Crops are drawn from the images padded with the inference frame margin
    (`with_margin`), so crops at the border look like inference's border tiles."""

    def __init__(
        self,
        images: list[np.ndarray],
        *,
        crop_px: int,
        seed: int,
        margin_px: int = MARGIN_PX,
        reference: np.ndarray | None = None,
    ) -> None:
        """`reference`: a frame of the images' size (a golden frame) whose crop at the same place
        follows each crop's channels (a golden-reference model's 6-channel input)."""
        self.images = [with_margin(img, margin_px) for img in images]
        self.reference = None if reference is None else with_margin(reference, margin_px)
        self.crop_px = crop_px
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> torch.Tensor:
        return to_tensor(self.sample_uint8(n))

    def sample_uint8(self, n: int) -> np.ndarray:
        """(n, crop, crop, 3) uint8 crops, as `sample` draws them; (n, crop, crop, 6) with a
        reference: each crop, then the reference's crop at the same place."""
        out = np.empty((n, self.crop_px, self.crop_px, 3 if self.reference is None else 6), np.uint8)
        c = self.crop_px
        for i in range(n):
            img, ref = self.images[int(self.rng.integers(len(self.images)))], self.reference
            h, w = img.shape[:2]
            if h < c or w < c:
                pad = ((0, max(0, c - h)), (0, max(0, c - w)), (0, 0))
                img = np.pad(img, pad, mode="reflect")
                ref = None if ref is None else np.pad(ref, pad, mode="reflect")
                h, w = img.shape[:2]
            y = int(self.rng.integers(h - c + 1))
            x = int(self.rng.integers(w - c + 1))
            out[i, :, :, :3] = img[y : y + c, x : x + c]
            if ref is not None:
                out[i, :, :, 3:] = ref[y : y + c, x : x + c]
        return out


def to_tensor(batch_hwc: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    return torch.from_numpy(batch_hwc).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def load_images(paths: list[Path], *, progress: bool) -> list[np.ndarray]:
    from tqdm import tqdm

    images = []
    shapes = set()
    for p in tqdm(paths, desc="reading images", disable=not progress, unit="img"):
        img = read_image(p)
        images.append(img)
        shapes.add(img.shape)
    log.info("read %d training images, %d distinct sizes", len(images), len(shapes))
    return images


def split_holdout(
    items: list[Any], *, fraction: float, seed: int, minimum: int = 4
) -> tuple[list[Any], list[Any]]:
    """(train, held-out): a seeded, evenly spread share of good images kept out of training."""
    n = len(items)
    k = max(minimum, round(n * fraction))
    if n - k < 1:
        raise DataError(f"only {n} good training images: at least {minimum + 1} are needed")
    rng = np.random.default_rng(seed)
    held = set(rng.choice(n, size=k, replace=False).tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_setting(key: str, value: Any, default: Any) -> Any:
    """A `--set KEY=VALUE` value in the type of the profile's default; `ModelError` names the key."""
    if not isinstance(value, str) or default is None:
        return value
    if isinstance(default, list | tuple):  # "3,4" -> [3, 4], each item in the type of the first default
        items = [v for v in value.split(",") if v.strip()]
        return [coerce_setting(key, v, default[0]) if default else v.strip() for v in items]
    text = value.strip()
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ModelError(f"setting {key}={value!r}: expected true or false")
    try:
        return type(default)(text)
    except ValueError:
        kind = {int: "a whole number", float: "a number"}.get(type(default), type(default).__name__)
        raise ModelError(f"setting {key}={value!r}: expected {kind} (the default is {default!r})") from None


def train_bundle(
    *,
    family: str,
    data: Path,
    out: Path,
    profile: str = "fast",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    tile_px: int = 256,
    overlap_px: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    on_fitted: Callable[[Fitted], None] | None = None,
) -> Path:
    """Train `family` on `data/train/good` and write a calibrated bundle to `out`."""
    module = training_module(family)
    if profile not in module.PROFILES:
        raise ModelError(
            f"unknown profile {profile!r} for {family}: choose one of {', '.join(module.PROFILES)}"
        )
    if tile_px % 32 or tile_px < 64:
        raise ModelError(f"tile size {tile_px} px must be a multiple of 32 and at least 64")
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists: choose another --out or pass --overwrite")
    settings = dict(module.PROFILES[profile])
    for key, value in (overrides or {}).items():
        if key not in settings:
            raise ModelError(f"unknown setting {key!r} for {family}: allowed {', '.join(sorted(settings))}")
        settings[key] = coerce_setting(key, value, settings[key])
    settings["tile_px"] = tile_px
    seed_everything(seed)
    paths = train_images(data, limit=limit)
    start = time.monotonic()
    images = load_images(paths, progress=progress)
    fitted: Fitted = module.fit(images, settings=settings, seed=seed, progress=progress)
    duration = time.monotonic() - start
    if on_fitted is not None:
        on_fitted(fitted)
    meta = BundleMeta(
        family=family,
        family_version=int(getattr(module, "FAMILY_VERSION", 1)),
        created=now_iso(),
        tiles=TileSpec(tile_px=tile_px, overlap_px=overlap_px),
        input_channels=fitted.input_channels,
        params=fitted.params,
        calibration=Calibration.model_validate(fitted.info.pop("calibration")),
        data_fingerprint=fingerprint_files(paths),
        training={
            "profile": profile,
            "seed": seed,
            "settings": settings,
            "images": len(paths),
            "data": str(data),
            "duration_s": round(duration, 1),
            "torch_threads": torch.get_num_threads(),
            **fitted.info,
        },
        libraries=library_versions(),
    )
    return write_bundle(out, meta, fitted.tensors, overwrite=overwrite)


QUANTILES = (0.5, 0.999)  # good pixels: median -> 0, 99.9th percentile -> 1 on the calibrated scale
HELD_OUT_FRR = 0.01  # the first threshold's target false-reject rate on the held-out frames


def holdout_quantiles(
    raw_fn: Callable[[torch.Tensor], torch.Tensor],
    held: list[np.ndarray],
    *,
    tile_px: int,
    max_values: int = 4_000_000,
    margin_px: int = MARGIN_PX,
) -> np.ndarray:
    """Per-channel (q_low, q_high) of `raw_fn`'s pre-normalisation maps over held-out good tiles
    (cut from the frames padded with the inference margin, as inference cuts them).

    `raw_fn` maps (B, 3, t, t) in [0, 1] to (B, C, h, w); returns an array (C, 2)."""
    from pipelines.tiling import TilePlan

    values: list[np.ndarray] = []
    with torch.inference_mode():
        for frame in held:
            h, w = frame.shape[:2]
            img = with_margin(frame, margin_px)
            plan = TilePlan.for_shape(
                height_px=img.shape[0], width_px=img.shape[1], tile_px=tile_px, overlap_px=0
            )
            tiles = plan.tiles(img)
            positions = plan.positions()
            for i in range(0, len(tiles), 8):
                m = raw_fn(to_tensor(tiles[i : i + 8]))
                stride = tile_px / m.shape[-1]
                centres = (np.arange(m.shape[-1]) + 0.5) * stride
                for k, (y, x) in enumerate(positions[i : i + 8]):
                    # Only the map over the frame itself: inference crops the margin (and any padding) away.
                    rows = (y + centres >= margin_px) & (y + centres < margin_px + h)
                    cols = (x + centres >= margin_px) & (x + centres < margin_px + w)
                    kept = m[k][:, rows][:, :, cols]
                    values.append(kept.reshape(m.shape[1], -1).numpy())
    allv = np.concatenate(values, axis=1)
    if allv.shape[1] > max_values:
        rng = np.random.default_rng(0)
        allv = allv[:, rng.choice(allv.shape[1], size=max_values, replace=False)]
    q = np.quantile(allv, QUANTILES, axis=1).T
    q[:, 1] = np.maximum(q[:, 1], q[:, 0] + 1e-6)
    return q.astype(np.float32)


def first_calibration(
    net: torch.nn.Module,
    global_branch: Any,
    held: list[np.ndarray],
    *,
    tile_px: int,
    overlap_px: int = 32,
    margin_px: int = 16,
    reference_frame: np.ndarray | None = None,
    align_branch: Callable[[np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """A first threshold from the held-out good images, so a new bundle is usable at once, with
    edge gains fitted on them (`pipelines.edges`).

    `aoi calibrate` replaces it with one from more data. `reference_frame`: the golden
    frame of a golden-reference model. `align_branch`: called with the held-out tile scores
    under the fitted edge gains (as the inspector will compare them with the whole-image
    branch's) before `global_branch` scores the images. One pass of the network either way."""
    from calibration.errors import CalibrationError
    from calibration.threshold import GoodImages, threshold_for_frr
    from pipelines.inference import TiledAnalyser, branch_part, torch_infer

    analyser = TiledAnalyser(
        torch_infer(net),
        tile_px=tile_px,
        overlap_px=overlap_px,
        margin_px=margin_px,
        reference_frame=reference_frame,
    )
    analyser.measure_raw()
    goods = GoodImages(pixels=False)
    for img in held:
        goods.add(analyser(img))
    gains = goods.edge_gains()
    if global_branch is not None:
        if align_branch is not None:
            align_branch(np.array([tile for tile, _ in goods.parts_under(gains)]))
        parts = []
        for img in held:
            r = global_branch(img)
            parts.append(branch_part(r.score, None if r.anomaly_map is None else float(r.anomaly_map.max())))
        goods.set_branch_parts(parts)
    if gains is not None and min(gains) < 1.0:
        log.info(
            "edge gains %s for the bands from %s px of the frame's edge (fitted on %d held-out good "
            "frames): where defective parts can differ at the edge or all over, check them with "
            "`aoi calibrate --bundle B --good DIR --bad DIR`, which keeps them only if they separate "
            "good from defective at least as well as none (and adds the surface score where it "
            "separates better)",
            [round(g, 2) for g in gains],
            list(goods.edge_fit.bands_px),
            len(held),
        )
    fusion = goods.fusion(target_frr=HELD_OUT_FRR, align=False)  # the branch's gain stays 1 here
    scores = fusion.scores(goods)
    try:
        result = threshold_for_frr(scores, target_frr=HELD_OUT_FRR)
        threshold, method, message = result.threshold, "held-out target_frr 1%", result.message
    except CalibrationError as exc:
        threshold = float(scores.max())
        method, message = "held-out maximum", f"too few held-out images for a rate target ({exc})"
    return {
        "image_threshold": float(threshold),
        "pixel_threshold": float(threshold),
        **fusion.calibration_fields(),
        "edge_bands_px": list(goods.bands_px),
        "method": method,
        "details": {
            **fusion.details(),
            **goods.edge_details(),
            "held_out_images": len(held),
            "held_out_score_max": float(scores.max()),
            "held_out_score_median": float(np.median(scores)),
            "message": message,
        },
    }
