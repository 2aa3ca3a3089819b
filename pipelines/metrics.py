"""Evaluation metrics for anomaly detection: image AUROC, pixel AUROC, AUPRO and F1.

These are the numbers `aoi eval` reports and papers on MVTec AD quote, computed
exactly (no threshold grid) with numpy and scipy only, so that the runtime has
no training stack to import.

- AUROC is the Mann-Whitney statistic: the probability that a defective sample
  scores above a good one, ties counting one half.
- AUPRO follows Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV
  2021): the per-region overlap (PRO) is the mean, over every connected
  defect region of every image, of the fraction of that region flagged; it is
  integrated over the false-positive rate from 0 to `fpr_limit` and divided by
  `fpr_limit`, so a perfect map scores 1.0 and a random one about
  `fpr_limit / 2`.

Ground-truth masks may be bool, 0/1 or 0-255 integers (a defect is >= 128, the
convention for masks resized with interpolation), or floats in [0, 1]
(a defect is >= 0.5). A mask of `None` means "no defect in this image".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["aupro", "evaluate", "f1_max", "image_auroc", "pixel_auroc"]

# Fixed seed: a subsampled pixel AUROC must give the same number on every run.
_SUBSAMPLE_SEED = 20240917
# Pass 1 of `aupro` estimates the score at `fpr_limit` from about this many
# random negative pixels; pass 2 then keeps only pixels above that estimate.
_QUANTILE_SAMPLE = 2_000_000
# Queries per searchsorted call, to bound the temporary index arrays.
_CHUNK = 1 << 22
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def image_auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve of image scores; label 1 = defective, ties count one half."""
    s, y = _scores_and_labels(scores, labels, "image_auroc")
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"image_auroc needs both good (label 0) and defective (label 1) images; "
            f"got {neg.size} good and {pos.size} defective"
        )
    return _mann_whitney_auc(pos, neg)


def pixel_auroc(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    *,
    max_pixels: int = 20_000_000,
) -> float:
    """Area under the ROC curve of all pixels of all images, pooled.

    Exact when the images hold at most `max_pixels` pixels in total. Above
    that, to bound memory, it is computed on a uniform random subsample of
    `max_pixels` pixels drawn without replacement and stratified by label
    (defect and good pixels keep their proportions), with a fixed seed so the
    result is the same on every run; the estimate's standard error is then
    about 1e-4 for typical data.
    """
    if max_pixels < 2:
        raise ValueError(f"max_pixels must be at least 2, got {max_pixels}")
    pairs = _checked_pairs(maps, masks, "pixel_auroc")
    n_pos_img = np.array([int(m.sum()) if m is not None else 0 for _, m in pairs], dtype=np.int64)
    n_img = np.array([a.size for a, _ in pairs], dtype=np.int64)
    n_neg_img = n_img - n_pos_img
    n_pos, n_neg = int(n_pos_img.sum()), int(n_neg_img.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"pixel_auroc needs both defect and good pixels; got {n_pos} defect and {n_neg} good pixels "
            f"in {len(pairs)} images"
        )
    dtype = _common_float(pairs)
    if n_pos + n_neg <= max_pixels:
        pos = np.concatenate([_select(a, m) for a, m in pairs if m is not None]).astype(dtype, copy=False)
        neg = np.concatenate([_select(a, ~m) if m is not None else a.ravel() for a, m in pairs]).astype(
            dtype, copy=False
        )
        return _mann_whitney_auc(pos, neg)

    rng = np.random.default_rng(_SUBSAMPLE_SEED)
    k_pos = min(n_pos, max(1, round(max_pixels * n_pos / (n_pos + n_neg))))
    k_neg = min(n_neg, max(1, max_pixels - k_pos))
    # A multivariate hypergeometric split followed by a uniform draw inside each
    # image is exactly a uniform draw without replacement from the pooled pixels.
    take_pos = rng.multivariate_hypergeometric(n_pos_img, k_pos, method="marginals")
    take_neg = rng.multivariate_hypergeometric(n_neg_img, k_neg, method="marginals")
    pos_parts, neg_parts = [], []
    for (a, m), tp, tn in zip(pairs, take_pos, take_neg, strict=True):
        if tp and m is not None:
            p = _select(a, m)
            pos_parts.append(p[rng.choice(p.size, size=int(tp), replace=False)])
        q = a.ravel() if m is None else _select(a, ~m)
        if tn:
            neg_parts.append(q[rng.choice(q.size, size=int(tn), replace=False)])
    pos = np.concatenate(pos_parts).astype(dtype, copy=False)
    neg = np.concatenate(neg_parts).astype(dtype, copy=False)
    return _mann_whitney_auc(pos, neg)


def aupro(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    *,
    fpr_limit: float = 0.3,
) -> float:
    """Normalised area under the per-region-overlap curve up to `fpr_limit` (MVTec AD).

    Exact: the curve has a point at every distinct score, as in the reference
    MVTec evaluation code (which sorts every pixel), and is integrated with
    the trapezoid rule, interpolated at exactly `fpr_limit`. Only pixels that
    score above the `fpr_limit` quantile of the good pixels are sorted, so 500
    maps of 640x640 take a few seconds and a few hundred MB beyond the maps.
    Regions are 8-connected components of each mask; images without a defect
    contribute good pixels only.
    """
    if not (0.0 < fpr_limit <= 1.0) or math.isnan(fpr_limit):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    pairs = _checked_pairs(maps, masks, "aupro")
    dtype = _common_float(pairs)
    rng = np.random.default_rng(_SUBSAMPLE_SEED)
    total_px = sum(a.size for a, _ in pairs)
    sample_per_px = min(1.0, _QUANTILE_SAMPLE / max(total_px, 1))

    # Pass 1: count good pixels, label the defect regions (keeping each defect
    # pixel's score and region), and sample good-pixel scores to estimate the
    # score at which the false-positive rate reaches fpr_limit.
    n_neg = 0
    n_regions = 0
    region_sizes: list[np.ndarray] = []
    pos_scores: list[np.ndarray] = []
    pos_regions: list[np.ndarray] = []
    neg_sample: list[np.ndarray] = []
    for a, m in pairs:
        flat = a.ravel()
        if m is None or not m.any():
            n_neg += a.size
            neg_mask = None
        else:
            labels, n_lab = ndimage.label(m, structure=_EIGHT_CONNECTED)
            sizes = np.bincount(labels.ravel(), minlength=n_lab + 1)[1:]
            pos_scores.append(_select(a, m))
            pos_regions.append(_select(labels, m).astype(np.int64) - 1 + n_regions)
            region_sizes.append(sizes)
            n_regions += n_lab
            n_neg += a.size - int(sizes.sum())
            neg_mask = ~m.ravel()
        n_draw = math.ceil(a.size * sample_per_px)
        idx = rng.integers(0, a.size, size=n_draw) if sample_per_px < 1.0 else np.arange(a.size)
        drawn = flat[idx] if neg_mask is None else flat[idx][neg_mask[idx]]
        neg_sample.append(drawn.astype(dtype, copy=False))
    if n_regions == 0:
        raise ValueError(
            f"aupro needs at least one defect region in the masks; none found in {len(pairs)} images"
        )
    if n_neg == 0:
        raise ValueError(
            "aupro needs good (non-defect) pixels to measure false positives; every pixel is a defect"
        )

    k_real = fpr_limit * n_neg
    if abs(k_real - round(k_real)) < 1e-9 * n_neg:
        k_real = float(round(k_real))  # 0.3 * 1000 must be 300, not 300.00000000000006
    k_int = max(1, math.ceil(k_real))

    # A margin of several standard errors above the sampled quantile makes a
    # second gathering pass (with no bound at all) practically never needed.
    sample = np.concatenate(neg_sample)
    frac = fpr_limit + 5.0 * math.sqrt(fpr_limit * (1 - fpr_limit) / max(sample.size, 1)) + 0.005
    low = _top_k_value(sample, math.ceil(frac * sample.size)) if frac < 1.0 and sample.size else None
    del sample, neg_sample

    # Pass 2: gather the good pixels at or above the estimate; every tie group
    # down to the fpr_limit cut is then complete.
    neg_sorted = _gather_negatives(pairs, low, dtype)
    if neg_sorted.size < k_int:
        neg_sorted = _gather_negatives(pairs, None, dtype)

    pos = np.concatenate(pos_scores).astype(dtype, copy=False)
    sizes_all = np.concatenate(region_sizes).astype(np.float64)
    weight = 1.0 / (n_regions * sizes_all[np.concatenate(pos_regions)])
    return _pro_area(neg_sorted, pos, weight, n_neg, k_real, k_int) / fpr_limit


def f1_max(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold (flag defective when score >= threshold).

    The threshold returned is a score from the data: the lowest score flagged.
    When several thresholds give the same F1, the highest is returned.
    """
    s, y = _scores_and_labels(scores, labels, "f1_max")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(f"f1_max needs at least one defective (label 1) image; got {s.size} good")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    # The last index of each run of equal scores is where a threshold at that
    # score cuts: everything up to and including it is flagged.
    ends = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[ends]
    flagged = ends + 1
    f1 = 2.0 * tp / (flagged + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s_desc[ends[best]])


def evaluate(
    image_scores: npt.ArrayLike,
    image_labels: npt.ArrayLike,
    maps: Sequence[np.ndarray] | None,
    masks: Sequence[np.ndarray | None] | None,
    *,
    fpr_limit: float = 0.3,
) -> dict[str, float | int | None]:
    """Every metric `aoi eval` reports, as a JSON-ready dict.

    Pixel metrics use only images whose mask is known: a `None` mask of a good
    image (label 0) means an all-good mask of its map's size; a `None` mask of
    a defective image means "not annotated" and leaves that image out of the
    pixel metrics. `pixel_auroc` and `aupro` are `None` when no map or no
    annotated defect pixel is available. Raises ValueError when the image
    labels hold only one class.
    """
    s, y = _scores_and_labels(image_scores, image_labels, "evaluate")
    f1, f1_threshold = f1_max(s, y)
    result: dict[str, float | int | None] = {
        "image_auroc": image_auroc(s, y),
        "pixel_auroc": None,
        "aupro": None,
        "f1_max": f1,
        "f1_threshold": f1_threshold,
        "n_images": int(s.size),
        "n_defective": int(y.sum()),
        "n_pixel_images": 0,
    }
    if maps is None:
        return result
    if len(maps) != s.size:
        raise ValueError(f"evaluate got {len(maps)} maps for {s.size} image scores; give one map per image")
    if masks is not None and len(masks) != s.size:
        raise ValueError(
            f"evaluate got {len(masks)} masks for {s.size} image scores; give one mask (or None) per image"
        )
    sel_maps: list[np.ndarray] = []
    sel_masks: list[np.ndarray | None] = []
    has_defect = False
    for i, amap in enumerate(maps):
        mask = masks[i] if masks is not None else None
        if mask is None and y[i]:
            continue  # a defective image without annotation says nothing about its pixels
        sel_maps.append(amap)
        sel_masks.append(mask)
        has_defect = has_defect or (mask is not None and bool(np.any(_binary_mask(mask, np.shape(amap), i))))
    result["n_pixel_images"] = len(sel_maps)
    if has_defect:
        result["pixel_auroc"] = pixel_auroc(sel_maps, sel_masks)
        result["aupro"] = aupro(sel_maps, sel_masks, fpr_limit=fpr_limit)
    return result


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), by sorting both and searching the smaller in the larger."""
    pos = np.sort(pos)
    neg = np.sort(neg)
    u2 = 0  # twice the Mann-Whitney U, kept in integers so it is exact
    if pos.size <= neg.size:
        for start in range(0, pos.size, _CHUNK):
            q = pos[start : start + _CHUNK]
            below = np.searchsorted(neg, q, side="left").sum() + np.searchsorted(neg, q, side="right").sum()
            u2 += int(below)
    else:
        for start in range(0, neg.size, _CHUNK):
            q = neg[start : start + _CHUNK]
            below = np.searchsorted(pos, q, side="right").sum() + np.searchsorted(pos, q, side="left").sum()
            u2 += 2 * pos.size * q.size - int(below)
    return u2 / (2.0 * pos.size * neg.size)


def _pro_area(
    neg_sorted: np.ndarray, pos: np.ndarray, weight: np.ndarray, n_neg: int, k_real: float, k_int: int
) -> float:
    """Trapezoid area under the PRO curve from FPR 0 to k_real / n_neg.

    Each good pixel at score s moves the curve right by 1/n_neg, from PRO
    W(> s) to W(>= s), where W sums the weights 1 / (regions x region size) of
    the defect pixels; a run of tied good pixels is one straight segment. So
    the area is a weighted Mann-Whitney sum over the good pixels above the cut,
    plus the part of the cut's tie group up to exactly k_real.
    """
    cut = neg_sorted[neg_sorted.size - k_int]  # the k_int-th highest good score
    above_start = int(np.searchsorted(neg_sorted, cut, side="right"))
    n_above = neg_sorted.size - above_start
    n_tied = above_start - int(np.searchsorted(neg_sorted, cut, side="left"))
    above = neg_sorted[above_start:]

    hit = pos > cut
    order = np.argsort(pos[hit], kind="stable")  # sorted queries keep the searches cache-friendly
    p, w = pos[hit][order], weight[hit][order]
    twice_full = 0.0
    for start in range(0, p.size, _CHUNK):
        q, wq = p[start : start + _CHUNK], w[start : start + _CHUNK]
        lt = np.searchsorted(above, q, side="left")
        le = np.searchsorted(above, q, side="right")
        twice_full += float(np.dot(wq, (lt + le).astype(np.float64)))

    pro_before = float(weight[hit].sum())  # W(> cut)
    pro_after = pro_before + float(weight[pos == cut].sum())  # W(>= cut)
    x = k_real - n_above  # how far into the tie group the limit falls, in pixels
    pro_at_limit = pro_before + (pro_after - pro_before) * x / n_tied
    return (0.5 * twice_full + x * 0.5 * (pro_before + pro_at_limit)) / n_neg


def _gather_negatives(
    pairs: Sequence[tuple[np.ndarray, np.ndarray | None]], low: np.generic | None, dtype: np.dtype
) -> np.ndarray:
    parts = []
    for a, m in pairs:
        if low is None:
            parts.append(a.ravel() if m is None else _select(a, ~m))
            continue
        keep = a >= low
        if m is not None:
            keep &= ~m
        parts.append(_select(a, keep))
    out = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
    out.sort()
    return out


def _select(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    # np.compress is about three times faster than values[keep] when the kept
    # pixels are scattered, and gathering is most of the time of `aupro`.
    return np.compress(keep.ravel(), values.ravel())


def _top_k_value(values: np.ndarray, k: int) -> np.generic:
    k = min(max(k, 1), values.size)
    return np.partition(values, values.size - k)[values.size - k]


def _common_float(pairs: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.dtype:
    # float16 maps are promoted so that sums and comparisons are not coarsened.
    return np.result_type(*(a.dtype for a, _ in pairs), np.float32)


def _scores_and_labels(
    scores: npt.ArrayLike, labels: npt.ArrayLike, name: str
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y_raw = np.asarray(labels)
    if s.ndim != 1 or y_raw.ndim != 1:
        raise ValueError(f"{name} needs 1-D scores and labels; got shapes {s.shape} and {y_raw.shape}")
    if s.size != y_raw.size:
        raise ValueError(f"{name} got {s.size} scores but {y_raw.size} labels; give one label per score")
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise ValueError(f"{name}: {bad} of {s.size} scores are NaN or infinite; check the model output")
    if y_raw.dtype != bool and not np.all(np.isin(y_raw, (0, 1))):
        raise ValueError(
            f"{name}: labels must be 0 (good) or 1 (defective); got values {np.unique(y_raw)[:5]}"
        )
    return s, y_raw.astype(bool)


def _checked_pairs(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], name: str
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Validated (map, bool mask or None) pairs; a mask without any defect becomes None."""
    if len(maps) != len(masks):
        raise ValueError(
            f"{name} got {len(maps)} maps but {len(masks)} masks; give one mask (or None) per map"
        )
    if len(maps) == 0:
        raise ValueError(f"{name} got no maps")
    pairs: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, (amap, mask) in enumerate(zip(maps, masks, strict=True)):
        a = np.asarray(amap)
        if a.ndim != 2:
            raise ValueError(f"{name}: map {i} has shape {a.shape}; maps must be 2-D (HxW)")
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{name}: map {i} has dtype {a.dtype}; maps must hold real numbers")
        if not np.isfinite(a).all():
            raise ValueError(
                f"{name}: map {i} holds NaN or infinite scores; check the model output for that image"
            )
        m = None if mask is None else _binary_mask(mask, a.shape, i)
        pairs.append((a, m if m is not None and m.any() else None))
    return pairs


def _binary_mask(mask: np.ndarray, shape: tuple[int, ...], index: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(
            f"mask {index} has shape {m.shape} but its map has shape {tuple(shape)}; they must match"
        )
    if m.dtype == bool:
        return m
    if m.size == 0:
        return m.astype(bool)
    if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        raise ValueError(f"mask {index} has dtype {m.dtype}; use bool, 0/1, 0-255 or [0, 1] float masks")
    lo, hi = m.min(), m.max()
    if np.issubdtype(m.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise ValueError(f"mask {index} holds values {lo}..{hi}; integer masks must be 0/1 or 0-255")
        return m.astype(bool) if hi <= 1 else m >= 128
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"mask {index} holds values {lo}..{hi}; float masks must lie in [0, 1]")
    return m >= 0.5
