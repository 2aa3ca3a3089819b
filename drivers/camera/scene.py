"""Synthetic inspection frames: package paper and inkjet prints, with defects and masks.

`SceneRenderer` draws the parts that the synthetic line camera delivers and that
`aoi synth` writes as datasets. A frame is a function of `(seed, index, defect)`
alone, so a run can be replayed part for part:

- the seed fixes the product design: for package paper the grade (seeds
  0-3: kraft, white top, grey board, bleached kraft, plain; 4-7: the same with
  a light repeating print; and so on cyclically), for inkjet prints the whole
  layout (logo, title, text blocks, colour patches, barcode);
- the index varies what varies from part to part on a real line: the fibre
  texture and paper formation, print registration (+-1-2 px), ink density,
  lighting flicker and sensor noise, all with the same statistics;
- the defect is drawn into that same part, so `render(i)` and
  `render(i, defect=d)` differ only inside the returned mask.

The renderer works in reflectance (paper, then ink, then a slight optical
blur, then the defect) and then applies the camera (vignetting, flicker,
sensor noise). The mask of a structural defect is exactly the set of pixels
the defect changed by a visible amount; a change below that threshold is not
drawn at all, so nothing outside the mask differs from the good part. Logical
defects (prints only) are correct everywhere locally; their masks cover the
affected layout element: where it should be (missing), where it went and
where it came from (shifted), the duplicate (extra), the recoloured part
(wrong_colour).

Frames are RGB uint8. Expensive things (textures at frame size plus margin,
the design's ink layer, the noise field) are computed once per renderer and
reused through random crops, flips and offsets, which keeps a 1913x2624 frame
well under 0.3 s on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import math
import string

import cv2
import numpy as np

from drivers.errors import ApplianceError

PRODUCTS = ("paper", "print")
STRUCTURAL_DEFECTS = ("scratch", "spot", "hole", "crease", "ink_streak", "smudge")
LOGICAL_DEFECTS = ("missing", "extra", "wrong_colour", "shifted")  # prints only

_ALL_DEFECTS = STRUCTURAL_DEFECTS + LOGICAL_DEFECTS
_MIN_SIZE_PX = 64
_MAX_SIZE_PX = 16384
# A structural defect must change some pixel by at least this much (grey levels),
# or it is drawn elsewhere; the sensor noise has a sigma of about 2-3 levels.
_MIN_PEAK_LEVELS = 24.0
# Independent random streams, so a defect never changes the part under it.
_STREAM_DESIGN, _STREAM_PART, _STREAM_DEFECT = 0x5EED, 0xBA5E, 0xDEFE


class SceneError(ApplianceError):
    """A synthetic scene was asked for with a bad product, defect or size."""


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered part: RGB pixels, the defect's mask (0/255) and what it is."""

    image: np.ndarray  # HxWx3 uint8 RGB
    mask: np.ndarray  # HxW uint8, 0 or 255, the defect's pixels (all zero when good)
    defect: str | None  # None for a good product
    product: str


def allowed_defects(product: str) -> tuple[str, ...]:
    """The defect kinds `product` can carry: structural for paper, all for prints."""
    _check_product(product)
    return STRUCTURAL_DEFECTS + (LOGICAL_DEFECTS if product == "print" else ())


def draw_defect(*, seed: int, index: int, defect_rate: float, defects: tuple[str, ...]) -> str | None:
    """Whether part `index` of a line run is defective, and with what: None for a
    good part. The same draw as the synthetic camera's, so a written recording and
    a live run with the same seed, rate and list carry the same defects."""
    if not defects:
        return None
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index])
    if rng.random() >= defect_rate:
        return None
    return defects[int(rng.integers(len(defects)))]


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise SceneError(f"unknown product {product!r}: use one of {', '.join(PRODUCTS)}")


def _seed_key(value: int) -> int:
    # SeedSequence takes non-negative integers only; any Python int maps to one.
    return int(value) % (1 << 64)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    hi = max(hi, lo * 1.0001)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _smooth_noise(rng: np.random.Generator, *, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise that varies smoothly over about `cells` cells per side."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std (float32); cv2's statistics are much faster on big arrays."""
    mean, std = cv2.meanStdDev(x)
    s = float(std[0, 0])
    return (x - np.float32(mean[0, 0])) * np.float32(1.0 / (s if s > 1e-6 else 1.0))


# --------------------------------------------------------------------------- paper


@dataclasses.dataclass(frozen=True)
class _PaperGrade:
    name: str
    tint_rgb: tuple[int, int, int]  # colour of the paper at mean brightness
    fine_levels: float  # std of the fibre texture, grey levels
    formation_levels: float  # std of the cloudy formation, grey levels
    fibre_density: float  # drawn fibres per 1000 px^2


_GRADES = (
    _PaperGrade("kraft", (184, 144, 102), 8.0, 6.0, 0.9),
    _PaperGrade("white_top", (226, 224, 217), 4.5, 3.5, 0.4),
    _PaperGrade("grey_board", (168, 166, 158), 7.0, 7.0, 1.0),
    _PaperGrade("bleached_kraft", (222, 205, 178), 6.0, 4.5, 0.7),
)
_PRINT_PAPER = _PaperGrade("inkjet_white", (236, 235, 230), 2.6, 1.6, 0.15)
_GREY_MEAN = 180.0  # grey level the tint is defined at; leaves headroom above


class _PaperTexture:
    """Fibrous paper: a fibre field precomputed larger than the frame, cropped and
    flipped per part, plus a fresh low-frequency formation per part."""

    def __init__(self, *, width_px: int, height_px: int, grade: _PaperGrade, rng: np.random.Generator):
        self.w, self.h = width_px, height_px
        self.grade = grade
        # The margin makes crops of different parts mostly different paper.
        self._mw, self._mh = max(16, width_px // 2), max(16, height_px // 2)
        self._fine = self._make_fine(rng, h=height_px + self._mh, w=width_px + self._mw)
        lut = np.empty((256, 1, 3), np.uint8)
        grey = np.arange(256, dtype=np.float32)
        for c in range(3):
            lut[:, 0, c] = np.clip(np.rint(grey * grade.tint_rgb[c] / _GREY_MEAN), 0, 255)
        self._lut = lut

    def _make_fine(self, rng: np.random.Generator, *, h: int, w: int) -> np.ndarray:
        """Fibre texture, oriented along the machine direction (image rows run
        across it, so fibres are vertical), stored as uint8 around 128, std 24."""
        grain = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (3, 3), 0.6)
        # Noise stretched along y: short and long fibres at two widths.
        short = rng.random((max(2, h // 5), w), dtype=np.float32)
        long_ = rng.random((max(2, h // 16), max(2, w // 2)), dtype=np.float32)
        field = cv2.resize(_standardise(short), (w, h), interpolation=cv2.INTER_LINEAR)
        field = cv2.scaleAdd(
            cv2.resize(_standardise(long_), (w, h), interpolation=cv2.INTER_LINEAR), 0.75, field
        )
        field = cv2.scaleAdd(_standardise(grain), 0.55, field)
        field = _standardise(field)
        self._draw_fibres(rng, field)
        # 24 levels per std; the tails beyond 5.3 std are clipped.
        return cv2.convertScaleAbs(np.maximum(field, np.float32(-5.3)), alpha=24.0, beta=128.0)

    def _draw_fibres(self, rng: np.random.Generator, field: np.ndarray) -> None:
        """Individual curved fibres, mostly along the machine direction."""
        h, w = field.shape
        n = int(self.grade.fibre_density * h * w / 1000.0)
        if n == 0:
            return
        centre = rng.random((n, 2)) * (w, h)
        angle = math.pi / 2 + rng.normal(0.0, 0.35, n)
        length = np.exp(rng.uniform(math.log(6), math.log(48), n))
        bend = rng.normal(0.0, 0.15, n) * length
        d = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
        half = (length / 2)[:, None]
        pts = np.stack([centre - d * half, centre + nrm * bend[:, None], centre + d * half], axis=1)
        pts = np.rint(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4)
        for group, level in enumerate((2.2, 1.4, -1.4, -2.2)):
            polys = list(pts[group::4])
            cv2.polylines(field, polys, False, float(level), 1, cv2.LINE_AA, 4)

    def grey(self, rng: np.random.Generator) -> np.ndarray:
        """One part's paper brightness (HxW uint8, mean about 180)."""
        h, w, g = self.h, self.w, self.grade
        oy, ox = int(rng.integers(self._mh + 1)), int(rng.integers(self._mw + 1))
        fine = self._fine[oy : oy + h, ox : ox + w]
        if rng.random() < 0.5:
            fine = fine[::-1]
        if rng.random() < 0.5:
            fine = fine[:, ::-1]
        # Formation: flocs at two scales, slightly elongated along the machine direction.
        mh, mw = max(2, -(-h // 4)), max(2, -(-w // 4))
        mid = cv2.GaussianBlur(rng.standard_normal((mh, mw)).astype(np.float32), (0, 0), 1.2, sigmaY=2.5)
        ch, cw = max(2, h // 48 + 2), max(2, w // 48 + 2)
        coarse = cv2.resize(
            rng.standard_normal((ch, cw)).astype(np.float32), (mw, mh), interpolation=cv2.INTER_CUBIC
        )
        low = (0.55 * _standardise(mid) + 0.85 * _standardise(coarse)) * np.float32(g.formation_levels)
        k = np.float32(g.fine_levels / 24.0)
        low += np.float32(_GREY_MEAN + rng.normal(0.0, 1.5)) - 128.0 * k
        out: np.ndarray = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
        out += fine * k
        return cv2.convertScaleAbs(out)

    def rgb(self, grey: np.ndarray) -> np.ndarray:
        """Tint a brightness image with the paper's colour (HxWx3 uint8)."""
        return cv2.LUT(cv2.merge([grey, grey, grey]), self._lut)


# --------------------------------------------------------------------------- ink

# What each ink looks like printed solid on white paper (RGB).
_INKS: dict[str, tuple[int, int, int]] = {
    "black": (34, 34, 40),
    "cyan": (0, 158, 224),
    "magenta": (214, 30, 128),
    "yellow": (248, 218, 20),
    "red": (212, 40, 44),
    "green": (28, 148, 72),
    "blue": (32, 62, 160),
    "orange": (240, 128, 24),
    "purple": (118, 52, 148),
}
_COLOUR_INKS = tuple(k for k in _INKS if k != "black")


def _absorb(ink: str) -> np.ndarray:
    """Absorptance (0..255 per channel) of an ink: 255 absorbs all light."""
    return 255.0 - np.asarray(_INKS[ink], np.float32)


@dataclasses.dataclass
class _Element:
    """One printed element of a design, its layers and its ink in its own box."""

    name: str
    kind: str  # "logo" | "text" | "patch" | "barcode"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, end exclusive
    coverages: list[np.ndarray]  # per layer, float32 0..1, box-sized
    inks: list[str]  # per layer
    absorb: np.ndarray = dataclasses.field(init=False)  # box-sized HxWx3 uint8

    def __post_init__(self) -> None:
        self.absorb = self.compose(self.inks)

    def compose(self, inks: list[str]) -> np.ndarray:
        """The element's absorptance with the given ink per layer (layers overprint)."""
        h, w = self.coverages[0].shape
        trans = np.ones((h, w, 3), np.float32)
        for cov, ink in zip(self.coverages, inks, strict=True):
            trans *= 1.0 - cov[..., None] * (_absorb(ink) / 255.0)
        return np.clip(np.rint(255.0 * (1.0 - trans)), 0, 255).astype(np.uint8)

    def shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0


def _tight(cov: np.ndarray, x0: int, y0: int) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Crop a canvas to its inked pixels; None when nothing was inked."""
    ys, xs = np.nonzero(cov > 0.02)
    if ys.size == 0:
        return None
    a, b, c, d = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return cov[a:b, c:d], (x0 + c, y0 + a, x0 + d, y0 + b)


def _text_canvas(
    rng: np.random.Generator, *, w: int, lines: int, pitch_px: float, cap_px: float, font: int, bold: bool
) -> np.ndarray:
    """Rows of random words set in a Hershey font, ragged right, as coverage."""
    h = max(1, math.ceil(lines * pitch_px))
    canvas = np.zeros((h, w), np.uint8)
    (_, ref_h), _ = cv2.getTextSize("H", font, 1.0, 1)
    scale = max(cap_px, 1.0) / ref_h
    thick = max(1, round(cap_px / (7.0 if bold else 11.0)))
    letters = string.ascii_lowercase + string.ascii_uppercase[:6] + string.digits[:4]
    for i in range(lines):
        target = w * (rng.uniform(0.35, 0.75) if i == lines - 1 and lines > 1 else rng.uniform(0.88, 1.0))
        words: list[str] = []
        misses = 0
        # A word that does not fit ends the line after a few tries; the word
        # cap bounds lines whose text is too small to measure.
        while misses < 3 and len(words) < 40:
            word = "".join(rng.choice(list(letters), size=int(rng.integers(2, 10))))
            trial = " ".join([*words, word])
            if cv2.getTextSize(trial, font, scale, thick)[0][0] > target:
                misses += 1
            else:
                words.append(word)
        if not words:
            words = [letters[int(rng.integers(26))]]
        base_y = round(i * pitch_px + (pitch_px + cap_px) / 2)
        cv2.putText(canvas, " ".join(words), (0, base_y), font, scale, 255, thick, cv2.LINE_AA)
    return canvas


class _Design:
    """A fixed print layout: elements placed on the frame and their ink layer,
    padded by the registration jitter."""

    def __init__(self, *, width_px: int, height_px: int, rng: np.random.Generator):
        self.w, self.h = width_px, height_px
        m = min(width_px, height_px)
        self.jitter_px = 2 if m >= 512 else 1
        self.gap_px = max(2, round(0.02 * m))
        self.margin_px = max(3, round(0.06 * m))
        self.elements: list[_Element] = []
        self._layout(rng)
        p = self.jitter_px
        self.absorb = np.zeros((height_px + 2 * p, width_px + 2 * p, 3), np.uint8)
        for el in self.elements:
            x0, y0, x1, y1 = el.box
            self.absorb[y0 + p : y1 + p, x0 + p : x1 + p] = el.absorb

    def _add(self, name: str, kind: str, canvas: np.ndarray, x0: int, y0: int, inks: list[str]) -> None:
        """Add a one-ink element from its coverage canvas (uint8 0..255) placed at x0, y0."""
        tight = _tight(canvas.astype(np.float32) / 255.0, x0, y0)
        if tight is None:
            return
        cov, box = tight
        self.elements.append(_Element(name, kind, box, [cov], inks))

    def _layout(self, rng: np.random.Generator) -> None:
        w, h, mg = self.w, self.h, self.margin_px
        cw, ch = w - 2 * mg, h - 2 * mg
        middle = ["body", "patches"]
        if rng.random() < 0.5:
            middle.reverse()
        rows = ["header", *middle, "footer"]
        frac = {"header": 0.15, "body": 0.30, "patches": 0.09, "footer": 0.15}
        gap = (1.0 - sum(frac.values())) / (len(rows) - 1)
        y = float(mg)
        text_ink = "black" if rng.random() < 0.7 else "blue"
        for row in rows:
            rh = frac[row] * ch
            top, rh_px = round(y), max(3, round(rh))
            if row == "header":
                self._header(rng, x=mg, y=top, w=cw, h=rh_px, text_ink=text_ink)
            elif row == "body":
                self._body(rng, x=mg, y=top, w=cw, h=rh_px, text_ink=text_ink)
            elif row == "patches":
                self._patches(rng, x=mg, y=top, w=cw, h=rh_px)
            else:
                self._footer(rng, x=mg, y=top, w=cw, h=rh_px, text_ink=text_ink)
            y += rh + gap * ch

    def _header(self, rng: np.random.Generator, *, x: int, y: int, w: int, h: int, text_ink: str) -> None:
        side = max(4, min(h, round(0.3 * w)))
        logo_left = rng.random() < 0.6
        lx = x if logo_left else x + w - side
        self._logo(rng, x=lx, y=y, side=side)
        tw = max(4, round((w - side - self.gap_px * 2) * rng.uniform(0.6, 0.9)))
        tx = x + side + self.gap_px * 2 if logo_left else x
        lines = 1 if rng.random() < 0.5 else 2
        pitch = h * rng.uniform(0.4, 0.6) / lines
        canvas = _text_canvas(
            rng,
            w=tw,
            lines=lines,
            pitch_px=pitch,
            cap_px=pitch * 0.55,
            font=cv2.FONT_HERSHEY_DUPLEX,
            bold=True,
        )
        self._add("title", "text", canvas, tx, y + round((h - canvas.shape[0]) / 2), [text_ink])

    def _logo(self, rng: np.random.Generator, *, x: int, y: int, side: int) -> None:
        """A few overlapping coloured shapes, each its own layer."""
        inks = list(rng.choice(list(_COLOUR_INKS), size=int(rng.integers(2, 4)), replace=False))
        shapes = list(rng.permutation(["disc", "triangle", "square", "ring", "bar"]))[: len(inks)]
        ss = 4  # supersampling for smooth edges at any size
        S = side * ss
        covs = []
        for shape in shapes:
            c = np.zeros((S, S), np.uint8)
            cx, cy = rng.uniform(0.35, 0.65, 2) * S
            r = rng.uniform(0.22, 0.34) * S
            if shape == "disc":
                cv2.circle(c, (int(cx), int(cy)), int(r), 255, -1, cv2.LINE_AA)
            elif shape == "ring":
                cv2.circle(c, (int(cx), int(cy)), int(r), 255, max(ss, int(r * 0.3)), cv2.LINE_AA)
            elif shape == "triangle":
                a0 = rng.uniform(0, 2 * math.pi)
                pts = [
                    (cx + r * 1.3 * math.cos(a0 + k * 2.094), cy + r * 1.3 * math.sin(a0 + k * 2.094))
                    for k in range(3)
                ]
                cv2.fillPoly(c, [np.rint(np.array(pts)).astype(np.int32)], 255, cv2.LINE_AA)
            elif shape == "square":
                rect = ((float(cx), float(cy)), (float(r * 1.6), float(r * 1.6)), float(rng.uniform(0, 90)))
                cv2.fillPoly(c, [np.rint(cv2.boxPoints(rect)).astype(np.int32)], 255, cv2.LINE_AA)
            else:
                rect = ((float(cx), float(cy)), (float(r * 2.6), float(r * 0.5)), float(rng.uniform(-30, 30)))
                cv2.fillPoly(c, [np.rint(cv2.boxPoints(rect)).astype(np.int32)], 255, cv2.LINE_AA)
            covs.append(cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
        union = np.maximum.reduce(covs)
        tight = _tight(union, x, y)
        if tight is None:
            return
        _, box = tight
        a, b = box[1] - y, box[3] - y
        c0, d0 = box[0] - x, box[2] - x
        self.elements.append(_Element("logo", "logo", box, [cv[a:b, c0:d0] for cv in covs], inks))

    def _body(self, rng: np.random.Generator, *, x: int, y: int, w: int, h: int, text_ink: str) -> None:
        cols = 2 if (w > 0.55 * self.h and rng.random() < 0.7) else 1
        col_w = (w - (cols - 1) * self.gap_px * 2) / cols
        pitch = max(3.0, rng.uniform(0.018, 0.024) * self.h)
        for k in range(cols):
            lines = int(np.clip(h * rng.uniform(0.7, 1.0) // pitch, 2, 12))
            bw = max(4, round(col_w * rng.uniform(0.8, 1.0)))
            canvas = _text_canvas(
                rng,
                w=bw,
                lines=lines,
                pitch_px=pitch,
                cap_px=pitch * 0.55,
                font=cv2.FONT_HERSHEY_SIMPLEX,
                bold=False,
            )
            bx = round(x + k * (col_w + self.gap_px * 2))
            self._add(f"text{k + 1}", "text", canvas, bx, y, [text_ink])

    def _patches(self, rng: np.random.Generator, *, x: int, y: int, w: int, h: int) -> None:
        n = int(rng.integers(3, 7))
        inks = list(rng.choice(list(_COLOUR_INKS), size=n, replace=False))
        side = max(3, min(h, round(w / (n * 1.7))))
        circle = rng.random() < 0.35
        pitch = w / n if rng.random() < 0.5 else side * 1.6
        for k, ink in enumerate(inks):
            px = round(x + k * pitch + (pitch - side) / 2)
            ss = 4
            c = np.zeros((side * ss, side * ss), np.uint8)
            if circle:
                cv2.circle(c, (side * ss // 2, side * ss // 2), side * ss // 2 - 1, 255, -1, cv2.LINE_AA)
            else:
                c[:] = 255
            cov = cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA)
            self._add(f"patch{k + 1}", "patch", cov, px, y + (h - side) // 2, [ink])

    def _footer(self, rng: np.random.Generator, *, x: int, y: int, w: int, h: int, text_ink: str) -> None:
        bw = max(8, round(w * rng.uniform(0.3, 0.45)))
        code_left = rng.random() < 0.5
        bx = x if code_left else x + w - bw
        self._barcode(rng, x=bx, y=y, w=bw, h=h)
        tw = max(4, round((w - bw - 4 * self.gap_px) * rng.uniform(0.5, 0.8)))
        tx = x + bw + 4 * self.gap_px if code_left else x
        pitch = max(3.0, rng.uniform(0.016, 0.02) * self.h)
        lines = int(np.clip(h * 0.8 // pitch, 1, 4))
        canvas = _text_canvas(
            rng,
            w=tw,
            lines=lines,
            pitch_px=pitch,
            cap_px=pitch * 0.55,
            font=cv2.FONT_HERSHEY_SIMPLEX,
            bold=False,
        )
        self._add("text_footer", "text", canvas, tx, y, ["black"])

    def _barcode(self, rng: np.random.Generator, *, x: int, y: int, w: int, h: int) -> None:
        """EAN-like bars (95 modules where there is room) with digits under them."""
        modules = min(95, w)
        profile = np.zeros(modules, np.float32)
        i, bar = 3, True
        profile[:3] = (1, 0, 1)  # guard bars
        while i < modules - 3:
            width = int(rng.integers(1, 5))
            if bar:
                profile[i : min(i + width, modules - 3)] = 1
            i += width
            bar = not bar
        profile[modules - 3 :] = (1, 0, 1)
        row = cv2.resize(profile[None, :], (w, 1), interpolation=cv2.INTER_AREA)[0]
        digits_h = round(0.18 * h) if h >= 24 else 0
        cov = np.zeros((h, w), np.float32)
        cov[: h - digits_h - (2 if digits_h else 0)] = row
        if digits_h:
            text = np.zeros((digits_h, w), np.uint8)
            digits = "".join(rng.choice(list(string.digits), size=13))
            (tw, th), _ = cv2.getTextSize(digits, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
            scale = min(w * 0.9 / tw, digits_h * 0.9 / th)
            cv2.putText(
                text,
                digits,
                (round(w * 0.05), digits_h - 1),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                255,
                1,
                cv2.LINE_AA,
            )
            cov[h - digits_h :] = text.astype(np.float32) / 255.0
        tight = _tight(cov, x, y)
        if tight is not None:
            c, box = tight
            self.elements.append(_Element("barcode", "barcode", box, [c], ["black"]))


class _Pattern:
    """A light repeating print on package paper (a brick grid of a small motif),
    precomputed one repeat larger than the frame and shifted per part."""

    def __init__(self, *, width_px: int, height_px: int, rng: np.random.Generator):
        m = min(width_px, height_px)
        self.pitch_x = int(np.clip(round(0.16 * m), 24, 420))
        self.pitch_y = round(self.pitch_x * rng.uniform(0.6, 1.0))
        px, py = self.pitch_x, self.pitch_y
        tile = np.zeros((2 * py, px), np.uint8)
        r = max(2, round(0.22 * py))
        motif = rng.choice(["ring", "diamond", "wave"])
        for cy, cx in ((py // 2, px // 2), (py + py // 2, 0), (py + py // 2, px)):
            if motif == "ring":
                cv2.circle(tile, (cx, cy), r, 255, max(1, r // 4), cv2.LINE_AA)
            elif motif == "diamond":
                pts = np.array([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], np.int32)
                cv2.polylines(tile, [pts], True, 255, max(1, r // 5), cv2.LINE_AA)
            else:
                xs = np.arange(-r * 2, r * 2 + 1)
                pts = np.stack([cx + xs, cy + np.rint(r * 0.4 * np.sin(xs / r * math.pi))], axis=1)
                cv2.polylines(tile, [pts.astype(np.int32)], False, 255, max(1, r // 5), cv2.LINE_AA)
        ink = str(rng.choice(["green", "blue", "red", "black", "orange"]))
        strength = rng.uniform(0.18, 0.3)
        reps_y = -(-(height_px + 2 * py) // (2 * py))
        reps_x = -(-(width_px + px) // px)
        cov = np.tile(tile, (reps_y, reps_x))[: height_px + 2 * py, : width_px + px]
        self.absorb = cv2.merge(
            [cv2.convertScaleAbs(cov, alpha=float(a) * strength / 255.0) for a in _absorb(ink)]
        )
        self.w, self.h = width_px, height_px

    def view(self, rng: np.random.Generator) -> np.ndarray:
        """The pattern at this part's phase on the web (a view, HxWx3)."""
        oy, ox = int(rng.integers(2 * self.pitch_y)), int(rng.integers(self.pitch_x))
        return self.absorb[oy : oy + self.h, ox : ox + self.w]


# --------------------------------------------------------------------------- defects


def _box_around(cx: float, cy: float, rx: float, ry: float, w: int, h: int) -> tuple[int, int, int, int]:
    return (
        max(0, math.floor(cx - rx)),
        max(0, math.floor(cy - ry)),
        min(w, math.ceil(cx + rx) + 1),
        min(h, math.ceil(cy + ry) + 1),
    )


def _blob(
    rng: np.random.Generator,
    box: tuple[int, int, int, int],
    *,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float,
    roughness: float,
    edge: float,
) -> np.ndarray:
    """An irregular elliptic blob in `box` (alpha 0..1, float32): `edge` is the
    width of its soft rim relative to the radius."""
    x0, y0, x1, y1 = box
    ys = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xs * ca + ys * sa) / rx
    v = (-xs * sa + ys * ca) / ry
    rho = np.sqrt(u * u + v * v)
    s = 1.0 - rho
    if roughness > 0:
        s += roughness * _smooth_noise(rng, h=y1 - y0, w=x1 - x0, cells=5)
    return np.clip(s / np.float32(max(edge, 1e-3)), 0.0, 1.0)


def _darken(region: np.ndarray, alpha: np.ndarray, absorb: np.ndarray) -> np.ndarray:
    """Lay a translucent ink or dirt of absorptance `absorb` (per channel 0..255)."""
    return region * (1.0 - alpha[..., None] * (absorb / 255.0))


def _lighten(region: np.ndarray, alpha: np.ndarray, target: float) -> np.ndarray:
    return region + (target - region) * alpha[..., None]


class _Stamp:
    """A structural defect drawn into a box of the frame: the new pixels there.
    `core` (bool, box-sized) marks pixels that belong to the defect even where
    its own profile crosses zero (the middle line of a fold)."""

    def __init__(self, box: tuple[int, int, int, int], new: np.ndarray, *, core: np.ndarray | None = None):
        self.box = box
        self.new = new
        self.core = core


def _spot(rng: np.random.Generator, img: np.ndarray, m: int) -> list[_Stamp]:
    h, w = img.shape[:2]
    r = _log_uniform(rng, max(1.5, 0.0025 * m), 0.07 * m)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
    box = _box_around(cx, cy, 1.6 * max(rx, ry) + 2, 1.6 * max(rx, ry) + 2, w, h)
    edge = rng.uniform(0.12, 0.5)
    alpha = _blob(
        rng, box, cx=cx, cy=cy, rx=rx, ry=ry, angle=rng.uniform(0, math.pi), roughness=0.25, edge=edge
    )
    region = img[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    if rng.random() < 0.7:  # dirt, oil, ink drop
        dirt = np.asarray(rng.choice([(200, 210, 225), (150, 160, 175), (215, 215, 210)]), np.float32)
        new = _darken(region, alpha * rng.uniform(0.6, 0.95), dirt)
    else:  # bleached or missing coating
        new = _lighten(region, alpha * rng.uniform(0.6, 0.9), 250.0)
    return [_Stamp(box, new)]


def _scratch(rng: np.random.Generator, img: np.ndarray, m: int) -> list[_Stamp]:
    h, w = img.shape[:2]
    length = _log_uniform(rng, max(6.0, 0.04 * m), 0.45 * m)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    ang = rng.uniform(0, math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    ctrl = np.array([cx, cy]) + nrm * rng.normal(0, 0.12) * length
    p0, p2 = np.array([cx, cy]) - d * length / 2, np.array([cx, cy]) + d * length / 2
    t = np.linspace(0, 1, 32)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p2
    thick = 1 if (m < 600 or rng.random() < 0.5) else int(rng.integers(2, 4))
    pad = thick + 3
    box = (
        max(0, int(pts[:, 0].min()) - pad),
        max(0, int(pts[:, 1].min()) - pad),
        min(w, int(pts[:, 0].max()) + pad + 1),
        min(h, int(pts[:, 1].max()) + pad + 1),
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        box = _box_around(cx, cy, 3, 3, w, h)
    bh, bw = box[3] - box[1], box[2] - box[0]
    canvas = np.zeros((bh, bw), np.uint8)
    local = np.rint((pts - (box[0], box[1])) * 16).astype(np.int32)
    cv2.polylines(canvas, [local], False, 255, thick, cv2.LINE_AA, 4)
    # Pressure varies along a scratch.
    alpha = (
        canvas.astype(np.float32)
        / 255.0
        * np.clip(0.8 + 0.3 * _smooth_noise(rng, h=bh, w=bw, cells=3), 0.3, 1.0)
    )
    region = img[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    # Scuffed fibres on bright paper read darker; where ink is scraped off the
    # paper shows through, lighter.
    bright = region.mean(axis=2, keepdims=True) > 170.0
    target = np.where(bright, region * np.float32(rng.uniform(0.45, 0.65)), np.float32(240.0))
    new = region + (target - region) * (alpha * np.float32(rng.uniform(0.6, 0.9)))[..., None]
    return [_Stamp(box, new)]


def _hole(rng: np.random.Generator, img: np.ndarray, m: int) -> list[_Stamp]:
    h, w = img.shape[:2]
    r = _log_uniform(rng, max(1.5, 0.002 * m), 0.035 * m)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)
    rim = 1.25 + 1.5 / r
    box = _box_around(cx, cy, rim * max(rx, ry) * 1.3 + 2, rim * max(rx, ry) * 1.3 + 2, w, h)
    ang = rng.uniform(0, math.pi)
    inner = _blob(rng, box, cx=cx, cy=cy, rx=rx, ry=ry, angle=ang, roughness=0.12, edge=0.08)
    outer = _blob(rng, box, cx=cx, cy=cy, rx=rx * rim, ry=ry * rim, angle=ang, roughness=0.12, edge=0.25)
    region = img[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    torn = _darken(
        region, np.clip(outer - inner, 0, 1) * rng.uniform(0.4, 0.7), np.full(3, 190.0, np.float32)
    )
    new = _lighten(torn, inner, 253.0)  # the light behind shows through
    return [_Stamp(box, new)]


def _crease(rng: np.random.Generator, img: np.ndarray, m: int) -> list[_Stamp]:
    """A fold: one flank lit, the other shaded, a thin dark core, faded ends.
    A long fold crosses the frame, so it is drawn in strips along its course
    rather than over its whole bounding box."""
    h, w = img.shape[:2]
    length = rng.uniform(0.15, 1.3) * m
    sigma = _log_uniform(rng, max(1.2, 0.003 * m), max(2.0, 0.012 * m))
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    ang = rng.uniform(0, math.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    curve = rng.normal(0, 0.15) / max(length, 1.0)
    a, b = rng.uniform(0.1, 0.25), rng.uniform(0.04, 0.15)
    # Points along the fold: t along the chord, curve * t^2 off it.
    tt = np.arange(-length / 2, length / 2 + 2.0, 2.0)
    px = cx + tt * ca - curve * tt * tt * sa
    py = cy + tt * sa + curve * tt * tt * ca
    reach = 5.0 * sigma + 2.0
    steep = abs(sa) >= abs(ca)
    along, across, limit, other = (py, px, h, w) if steep else (px, py, w, h)
    stamps = []
    strip = 32
    start = max(0, int(along.min() - reach))
    stop = min(limit, int(along.max() + reach) + 1)
    for s0 in range(start, stop, strip):
        s1 = min(stop, s0 + strip)
        near = (along >= s0 - reach) & (along < s1 + reach)
        if not near.any():
            continue
        c0 = max(0, int(across[near].min() - reach))
        c1 = min(other, int(across[near].max() + reach) + 1)
        if c1 <= c0:
            continue
        box = (c0, s0, c1, s1) if steep else (s0, c0, s1, c1)
        x0, y0, x1, y1 = box
        ys = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
        xs = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
        t = xs * np.float32(ca) + ys * np.float32(sa)
        z = (-xs * np.float32(sa) + ys * np.float32(ca) - np.float32(curve) * t * t) / np.float32(sigma)
        g2 = np.exp(-0.5 * z * z)
        env = np.clip((length / 2 - np.abs(t)) / np.float32(0.12 * length), 0.0, 1.0)
        gain = 1.0 + env * (np.float32(a * 1.6487) * z * g2 - np.float32(b) * g2**8)  # e^0.5: flank peak is a
        new = img[y0:y1, x0:x1].astype(np.float32) * gain[..., None]
        stamps.append(_Stamp(box, new, core=(np.abs(z) < 1.2) & (env > 0.3)))
    return stamps


def _ink_streak(rng: np.random.Generator, img: np.ndarray, m: int) -> list[_Stamp]:
    """Ink dragged along the print direction (down the frame), fading out."""
    h, w = img.shape[:2]
    width = _log_uniform(rng, 1.2, max(1.5, 0.012 * m))
    length = _log_uniform(rng, max(8.0, 0.08 * h), float(h))
    xc0 = rng.uniform(0, w)
    ys0 = rng.uniform(-0.2 * length, h - 0.5 * length)
    drift = rng.normal(0, 0.01)
    wobble = rng.uniform(0, 0.6 * width + 0.5)
    y0, y1 = max(0, int(ys0)), min(h, int(ys0 + length) + 1)
    if y1 - y0 < 2:
        y0, y1 = 0, min(h, max(2, int(length)))
    reach = width * 1.2 + abs(drift) * length + wobble + 2
    x0, x1 = max(0, int(xc0 - reach)), min(w, int(xc0 + reach) + 1)
    if x1 - x0 < 2:
        x0, x1 = max(0, w - 4), w
    box = (x0, y0, x1, y1)
    tt = (np.arange(y0, y1, dtype=np.float32) - ys0) / np.float32(length)
    centre = xc0 + drift * tt * length + wobble * np.sin(tt * rng.uniform(3, 12) + rng.uniform(0, 6))
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - centre[:, None]) / np.float32(width / 2)
    along = np.clip(1.0 - tt, 0.0, 1.0) ** rng.uniform(0.3, 1.0)
    along *= np.clip(0.75 + 0.25 * _smooth_noise(rng, h=y1 - y0, w=1, cells=6)[:, 0], 0.3, 1.0)
    alpha = np.exp(-(dx**4)) * along[:, None] * np.float32(rng.uniform(0.55, 0.9))
    ink = str(rng.choice(["black", "black", "cyan", "magenta", "blue"]))
    region = img[y0:y1, x0:x1].astype(np.float32)
    return [_Stamp(box, _darken(region, alpha, _absorb(ink)))]


def _smudge(rng: np.random.Generator, img: np.ndarray, m: int) -> list[_Stamp]:
    """Smeared ink or grease: a soft, dark, blurred and elongated area."""
    h, w = img.shape[:2]
    r = _log_uniform(rng, max(3.0, 0.015 * m), 0.12 * m)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = r * rng.uniform(1.0, 2.2), r * rng.uniform(0.5, 1.0)
    box = _box_around(cx, cy, 1.3 * max(rx, ry) + 2, 1.3 * max(rx, ry) + 2, w, h)
    alpha = _blob(
        rng, box, cx=cx, cy=cy, rx=rx, ry=ry, angle=rng.uniform(0, math.pi), roughness=0.35, edge=0.9
    )
    alpha = alpha * np.float32(rng.uniform(0.25, 0.5))
    tone = np.asarray(rng.choice([(185, 185, 178), (200, 190, 175), (170, 175, 190)]), np.float32)
    region = img[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    return [_Stamp(box, _darken(region, alpha, tone))]


_STRUCTURAL = {
    "scratch": _scratch,
    "spot": _spot,
    "hole": _hole,
    "crease": _crease,
    "ink_streak": _ink_streak,
    "smudge": _smudge,
}


def _apply_structural(rng: np.random.Generator, img: np.ndarray, defect: str) -> np.ndarray:
    """Draw `defect` into `img` (in place) and return its mask. A change below the
    visibility threshold is dropped, so the mask is exactly the changed pixels.
    A defect that would be invisible where it fell (dark ink under a dark spot)
    is drawn again elsewhere."""
    h, w = img.shape[:2]
    m = min(h, w)
    Drawn = tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray | None]
    best: tuple[float, list[Drawn]] | None = None
    for _ in range(8):
        drawn = []
        peak = 0.0
        for stamp in _STRUCTURAL[defect](rng, img, m):
            x0, y0, x1, y1 = stamp.box
            new = np.clip(np.rint(stamp.new), 0, 255).astype(np.uint8)
            diff = np.abs(new.astype(np.int16) - img[y0:y1, x0:x1]).max(axis=2)
            peak = max(peak, float(diff.max()) if diff.size else 0.0)
            drawn.append((stamp.box, new, diff, stamp.core))
        if drawn and (best is None or peak > best[0]):
            best = (peak, drawn)
        if peak >= _MIN_PEAK_LEVELS:
            break
    assert best is not None
    peak, drawn = best
    mask = np.zeros((h, w), np.uint8)
    # Soft tails below a fraction of the peak are not drawn: they would be
    # invisible in the sensor noise and would blow the mask up.
    threshold = float(np.clip(0.12 * peak, 5.0, 12.0))
    for (x0, y0, x1, y1), new, diff, core in drawn:
        changed = diff >= threshold
        old = img[y0:y1, x0:x1]
        old[changed] = new[changed]
        mask[y0:y1, x0:x1][changed] = 255
        if core is not None and changed.any():
            mask[y0:y1, x0:x1][core] = 255
    if not mask.any():
        # Nothing visible anywhere (a frame of solid ink): mark one pixel as a
        # clearly wrong dot rather than return a defect without a mask.
        (x0, y0, x1, y1), _, _, _ = drawn[0]
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        img[cy, cx] = 255 - img[cy, cx]
        mask[cy, cx] = 255
    return mask


# --------------------------------------------------------------------------- logical defects


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _grow(box: tuple[int, int, int, int], by: int) -> tuple[int, int, int, int]:
    return box[0] - by, box[1] - by, box[2] + by, box[3] + by


class _LogicalEdit:
    """A changed copy of the design's ink layer and the affected boxes/mask."""

    def __init__(self, design: _Design):
        self.design = design
        self.absorb = design.absorb.copy()
        self.boxes: list[tuple[int, int, int, int]] = []
        self.pixel_mask: np.ndarray | None = None  # frame-sized, design coordinates

    def _slot(self, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        p = self.design.jitter_px
        return slice(box[1] + p, box[3] + p), slice(box[0] + p, box[2] + p)

    def clear(self, el: _Element) -> None:
        self.absorb[self._slot(el.box)] = 0

    def paste(self, el: _Element, box: tuple[int, int, int, int], absorb: np.ndarray | None = None) -> None:
        # Overprinting multiplies transmittances.
        ink = (el.absorb if absorb is None else absorb).astype(np.float32)
        sl = self._slot(box)
        under = self.absorb[sl].astype(np.float32)
        self.absorb[sl] = np.rint(255.0 - (255.0 - under) * (255.0 - ink) / 255.0).astype(np.uint8)


def _free_place(
    design: _Design,
    el: _Element,
    others: list[_Element],
    candidates: list[tuple[int, int]],
) -> tuple[tuple[int, int, int, int], int]:
    """Of the candidate top-left corners, the first where `el` fits inside the
    frame without touching other elements, else the one with the least overlap."""
    eh, ew = el.shape()
    lim = max(1, design.margin_px // 2)
    best: tuple[tuple[int, int, int, int], int] | None = None
    for x, y in candidates:
        if x < lim or y < lim or x + ew > design.w - lim or y + eh > design.h - lim:
            continue
        box = (x, y, x + ew, y + eh)
        cost = sum(_overlap(_grow(o.box, design.gap_px), box) for o in others)
        if best is None or cost < best[1]:
            best = (box, cost)
        if cost == 0:
            break
    if best is None:  # nothing fits inside the margins: clamp into the frame
        x = int(np.clip(candidates[0][0], 0, max(0, design.w - ew)))
        y = int(np.clip(candidates[0][1], 0, max(0, design.h - eh)))
        box = (x, y, x + ew, y + eh)
        best = (box, sum(_overlap(o.box, box) for o in others))
    return best


def _apply_logical(rng: np.random.Generator, design: _Design, defect: str) -> _LogicalEdit:
    edit = _LogicalEdit(design)
    els = design.elements
    order = [els[int(i)] for i in rng.permutation(len(els))]
    if defect == "missing":
        el = order[0]
        edit.clear(el)
        edit.boxes.append(el.box)
    elif defect == "wrong_colour":
        choices = [(el, k) for el in order if el.kind in ("patch", "logo") for k in range(len(el.inks))]
        el, k = choices[int(rng.integers(len(choices)))]
        now = _INKS[el.inks[k]]
        far = [
            i for i in _COLOUR_INKS if sum((a - b) ** 2 for a, b in zip(_INKS[i], now, strict=True)) > 150**2
        ]
        inks = list(el.inks)
        inks[k] = str(rng.choice(far))
        absorb = el.compose(inks)
        edit.clear(el)
        edit.paste(el, el.box, absorb)
        changed = np.abs(absorb.astype(np.int16) - el.absorb).max(axis=2) > 0
        mask = np.zeros((design.h, design.w), np.uint8)
        mask[el.box[1] : el.box[3], el.box[0] : el.box[2]][changed] = 255
        edit.pixel_mask = mask
    elif defect in ("extra", "shifted"):
        plans: list[tuple[int, _Element, tuple[int, int, int, int]]] = []
        for el in order:
            others = [o for o in els if o is not el]
            eh, ew = el.shape()
            if defect == "extra":
                others = els
                cands = [
                    (int(rng.integers(0, max(1, design.w - ew))), int(rng.integers(0, max(1, design.h - eh))))
                    for _ in range(96)
                ]
            else:
                cands = []
                for _ in range(96):
                    mag, ang = rng.uniform(0.05, 0.15), rng.uniform(0, 2 * math.pi)
                    cands.append(
                        (
                            el.box[0] + round(mag * design.w * math.cos(ang)),
                            el.box[1] + round(mag * design.h * math.sin(ang)),
                        )
                    )
            box, cost = _free_place(design, el, others, cands)
            plans.append((cost, el, box))
            if cost == 0:
                break
        cost, el, box = min(plans, key=lambda p: p[0])
        if defect == "shifted":
            edit.clear(el)
            edit.boxes.append(el.box)
        edit.paste(el, box)
        edit.boxes.append(box)
    return edit


# --------------------------------------------------------------------------- camera


class _Camera:
    """Vignetting, lighting flicker and sensor noise of the simulated camera."""

    def __init__(self, *, width_px: int, height_px: int, rng: np.random.Generator):
        w, h = width_px, height_px
        ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
        xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :] * np.float32(w / max(w, h))
        ys = ys * np.float32(h / max(w, h))
        ox, oy = rng.uniform(-0.15, 0.15, 2)
        r2 = ((xs - ox) ** 2 + (ys - oy) ** 2) / np.float32(2.0 * 0.5)
        gain = 1.0 - rng.uniform(0.06, 0.12) * r2 + rng.uniform(-0.03, 0.03) * xs
        self._gain_scale = 240.0  # gain stored at 240/255 so flicker above 1 does not clip
        g8 = np.clip(np.rint(gain * self._gain_scale), 0, 255).astype(np.uint8)
        self._vignette = cv2.merge([g8, g8, g8])
        self.noise_sigma = rng.uniform(2.0, 3.0)
        # One noise field with a margin; each part reads it at its own offset.
        self._pad = 64
        # One grey field read at three offsets gives three channels of independent
        # noise for a third of the (slow) normal draws.
        nh, nw = h + self._pad, w + self._pad
        normal = rng.standard_normal((nh + 40, nw + 40), dtype=np.float32)
        field = cv2.convertScaleAbs(normal, alpha=self.noise_sigma, beta=128.0)
        self._noise = cv2.merge([field[:nh, :nw], field[17 : 17 + nh, 31 : 31 + nw], field[40:, 40:]])
        self.w, self.h = w, h

    def expose(self, rng: np.random.Generator, reflectance: np.ndarray) -> np.ndarray:
        flicker = 1.0 + rng.normal(0.0, 0.01)
        lit = cv2.multiply(reflectance, self._vignette, scale=flicker / self._gain_scale)
        oy, ox = int(rng.integers(self._pad)), int(rng.integers(self._pad))
        return cv2.addWeighted(lit, 1.0, self._noise[oy : oy + self.h, ox : ox + self.w], 1.0, -128.0)


# --------------------------------------------------------------------------- renderer


class SceneRenderer:
    """Renders parts of one product design (fixed by `seed`) at a fixed size.

    `render(index, defect=...)` is deterministic in `(seed, index, defect)`;
    the design, textures and noise field are built here, once.
    """

    def __init__(self, *, product: str, width_px: int = 1913, height_px: int = 2624, seed: int = 0) -> None:
        _check_product(product)
        for name, value in (("width_px", width_px), ("height_px", height_px)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise SceneError(f"{name} must be an integer number of pixels, got {value!r}")
            if not _MIN_SIZE_PX <= int(value) <= _MAX_SIZE_PX:
                raise SceneError(
                    f"{name}={value} is out of range: frames are {_MIN_SIZE_PX} to {_MAX_SIZE_PX} px per side"
                )
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise SceneError(f"seed must be an integer, got {seed!r}")
        self.product = product
        self.width_px, self.height_px, self.seed = int(width_px), int(height_px), int(seed)
        self.defects = allowed_defects(product)
        self._key = _seed_key(self.seed)
        rng = np.random.default_rng([_STREAM_DESIGN, self._key, PRODUCTS.index(product)])
        w, h = self.width_px, self.height_px
        self._design: _Design | None = None
        self._pattern: _Pattern | None = None
        if product == "print":
            grade = _PRINT_PAPER
            self._design = _Design(width_px=w, height_px=h, rng=rng)
        else:
            # Seeds cycle through the grades, plain then printed: 0-3 plain
            # kraft, white top, grey board, bleached kraft; 4-7 the same printed.
            grade = _GRADES[self._key % len(_GRADES)]
            if (self._key // len(_GRADES)) % 2:
                self._pattern = _Pattern(width_px=w, height_px=h, rng=rng)
        self.paper_grade = grade.name
        self._paper = _PaperTexture(width_px=w, height_px=h, grade=grade, rng=rng)
        self._camera = _Camera(width_px=w, height_px=h, rng=rng)

    @property
    def has_pattern(self) -> bool:
        """Whether this paper carries a light repeating print (paper only)."""
        return self._pattern is not None

    @property
    def layout(self) -> tuple[tuple[str, str, tuple[int, int, int, int]], ...]:
        """The print design as (name, kind, (x0, y0, x1, y1)) per element; empty for paper."""
        if self._design is None:
            return ()
        return tuple((el.name, el.kind, el.box) for el in self._design.elements)

    def render(self, index: int, *, defect: str | None = None) -> Rendered:
        """Part `index`, good (`defect=None`) or with the named defect."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise SceneError(f"part index must be an integer, got {index!r}")
        if defect is not None and defect not in self.defects:
            if defect in LOGICAL_DEFECTS:
                raise SceneError(
                    f"defect {defect!r} is a logical (layout) defect and needs product 'print', "
                    f"not {self.product!r}: use one of {', '.join(self.defects)}"
                )
            raise SceneError(
                f"unknown defect {defect!r} for {self.product!r}: use one of {', '.join(self.defects)}"
            )
        w, h = self.width_px, self.height_px
        part = np.random.default_rng([_STREAM_PART, self._key, _seed_key(int(index))])
        bad = None
        if defect is not None:
            bad = np.random.default_rng(
                [_STREAM_DEFECT, self._key, _seed_key(int(index)), _ALL_DEFECTS.index(defect)]
            )
        # Every draw from `part` happens whatever the defect, so good and bad
        # parts of one index are the same part.
        img = self._paper.rgb(self._paper.grey(part))
        mask = np.zeros((h, w), np.uint8)
        ink: np.ndarray | None = None
        density = np.clip(1.0 + part.normal(0.0, 0.035, 3), 0.9, 1.1)
        if self._design is not None:
            p = self._design.jitter_px
            dx, dy = (int(v) for v in part.integers(-p, p + 1, 2))
            absorb = self._design.absorb
            if defect in LOGICAL_DEFECTS:
                assert bad is not None
                edit = _apply_logical(bad, self._design, defect)
                absorb = edit.absorb
                mask = self._logical_mask(edit, dx=dx, dy=dy)
            ink = absorb[p + dy : p + dy + h, p + dx : p + dx + w]
        elif self._pattern is not None:
            ink = self._pattern.view(part)
        if ink is not None:
            m = np.zeros((3, 4), np.float32)
            m[[0, 1, 2], [0, 1, 2]] = -density
            m[:, 3] = 255.0
            img = cv2.multiply(img, cv2.transform(ink, m), scale=1.0 / 255.0)
        img = cv2.GaussianBlur(img, (3, 3), 0.6)  # optics: nothing is perfectly sharp
        if defect in STRUCTURAL_DEFECTS:
            assert bad is not None
            mask = _apply_structural(bad, img, defect)
        img = self._camera.expose(part, img)
        return Rendered(image=img, mask=mask, defect=defect, product=self.product)

    def _logical_mask(self, edit: _LogicalEdit, *, dx: int, dy: int) -> np.ndarray:
        """The edit's region in frame coordinates: the print is registered `dx, dy`
        off, and the blur spreads an edge by a pixel."""
        w, h = self.width_px, self.height_px
        mask: np.ndarray = np.zeros((h, w), np.uint8)
        if edit.pixel_mask is not None:
            shifted = np.zeros_like(mask)
            src = edit.pixel_mask
            ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
            yd, xd = slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx))
            # Frame pixel (y, x) shows design pixel (y + dy, x + dx).
            shifted[ys, xs] = src[yd, xd]
            mask = cv2.dilate(shifted, np.ones((3, 3), np.uint8))
        for x0, y0, x1, y1 in edit.boxes:
            mask[max(0, y0 - dy - 2) : max(0, y1 - dy + 2), max(0, x0 - dx - 2) : max(0, x1 - dx + 2)] = 255
        return mask
