"""The synthetic line as a camera: rendered parts, some with known defects.

Each frame is one part rendered by `drivers.camera.scene.SceneRenderer`
(package paper or inkjet prints). Whether part `i` is defective, and which
defect it carries, is drawn from a generator seeded with `(seed, i)`, so a run
is the same part for part whatever the frame rate or the consumer's speed.
Every Frame carries the truth:
`{"defective": bool, "defect": str | None, "mask": HxW uint8 0/255, "product": str}`,
and `part_id` "P000123" (the part's index).

Frames come at `frame_rate_hz` (or as fast as they can be rendered when None),
endlessly or for `parts` parts followed by `EndOfStream`.

Rendering a 1913x2624 part takes 55-160 ms of host CPU, which a real camera
(frames arrive by DMA) does not cost. For benchmarks, `prerender: N` renders
N parts at open() and hands them out in turn (part i shows rendered part
i mod N, with that part's truth), so the camera costs a copy, not a render.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from drivers.camera.base import Camera, EndOfStream, Frame
from drivers.camera.replay import FramePacer
from drivers.errors import CameraError
from drivers.settings import Settings


class SyntheticSettings(Settings):
    """The simulated line: which product, how big, how fast, how often defective."""

    type: Literal["synthetic"] = Field(default="synthetic", description="Selects the synthetic line camera.")
    product: Literal["print", "paper"] = Field(
        default="paper", description="Rendered product: inkjet print or paper."
    )
    width_px: int = Field(default=1913, ge=64, description="Frame width [px].")
    height_px: int = Field(default=2624, ge=64, description="Frame height [px].")
    frame_rate_hz: float | None = Field(
        default=None, gt=0, description="Parts per second [Hz]; None renders them as fast as possible."
    )
    defect_rate: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Probability that a part is defective [0..1]."
    )
    defects: list[str] | None = Field(
        default=None, description="Defect kinds to draw from; None means every kind the product can carry."
    )
    seed: int = Field(default=0, description="Seed of the scene and of the defect draws.")
    pixel_format: Literal["mono8", "rgb8"] = Field(
        default="rgb8", description="mono8 delivers HxW grey frames, rgb8 HxWx3 RGB."
    )
    parts: int | None = Field(
        default=None, ge=1, description="Parts in the run before end of stream; None is endless."
    )
    prerender: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Render this many parts once at open() and cycle them (count; about 20 MB each at "
        "1913x2624), so rendering does not compete with inspection as a real camera's DMA does not; "
        "0 renders every part as it comes.",
    )

    @model_validator(mode="after")
    def _verify(self) -> SyntheticSettings:
        verify_defects_listed(self)
        return self


def verify_defects_listed(settings: SyntheticSettings) -> None:
    """A defect list, when given, must name at least one defect and none twice."""
    if settings.defects is not None:
        if not settings.defects:
            raise ValueError("camera.defects is empty: list defect kinds or leave it out for all")
        if len(set(settings.defects)) != len(settings.defects):
            raise ValueError(f"camera.defects names a defect twice: {settings.defects}")


class SyntheticCamera(Camera):
    """Parts from `SceneRenderer` as Frames with truth; no threads, no buffers."""

    name = "synthetic"

    def __init__(self, settings: SyntheticSettings) -> None:
        super().__init__()
        self.settings = settings
        self._renderer: Any = None
        self._defects: tuple[str, ...] = ()
        self._index = 0
        self._pacer = FramePacer(frame_rate_hz=settings.frame_rate_hz)
        self._rendered: list[tuple[Any, str | None]] = []

    @property
    def defects(self) -> tuple[str, ...]:
        """The defect kinds this run draws from (known after open())."""
        return self._defects

    def open(self) -> None:
        """Build the renderer; CameraError naming an unknown product or defect."""
        from drivers.camera.scene import SceneRenderer, allowed_defects

        s = self.settings
        try:
            allowed = allowed_defects(s.product)
        except Exception as exc:  # SceneError: an unknown product
            raise CameraError(f"synthetic camera: {exc}") from exc
        if s.defects is None:
            self._defects = allowed
        else:
            unknown = [d for d in s.defects if d not in allowed]
            if unknown:
                raise CameraError(
                    f"unknown synthetic defect(s) for product {s.product!r}: "
                    f"{', '.join(map(repr, unknown))}; use any of {', '.join(allowed)}"
                )
            self._defects = tuple(s.defects)
        try:
            self._renderer = SceneRenderer(
                product=s.product, width_px=s.width_px, height_px=s.height_px, seed=s.seed
            )
        except Exception as exc:  # SceneError: a size the renderer refuses
            raise CameraError(f"synthetic camera: {exc}") from exc
        self._rendered = [self._render(i) for i in range(s.prerender)]
        for out, _ in self._rendered:
            out.image.flags.writeable = False
            out.mask.flags.writeable = False
        self._index = 0
        self.status.state = "open"

    def _render(self, index: int) -> tuple[Any, str | None]:
        defect = self.defect_for(index)
        try:
            return self._renderer.render(index, defect=defect), defect
        except Exception as exc:
            raise CameraError(
                f"synthetic part {index} ({defect or 'good'}) could not be rendered: {exc}"
            ) from exc

    def start(self) -> None:
        """Start the line from the current part."""
        if self._renderer is None:
            raise CameraError("synthetic camera is not open: call open() first")
        self._pacer.restart()
        self.status.state = "streaming"

    def defect_for(self, index: int) -> str | None:
        """The defect part `index` carries (None for a good part): the same for a
        given seed, defect_rate and defect list, whatever the timing, and the
        same draw `aoi synth` uses for recordings (`scene.draw_defect`)."""
        from drivers.camera.scene import draw_defect

        return draw_defect(
            seed=self.settings.seed, index=index, defect_rate=self.settings.defect_rate, defects=self._defects
        )

    def _acquire(self, *, timeout_s: float) -> tuple[Frame, Any]:
        if self.status.state != "streaming" or self._renderer is None:
            raise CameraError(f"synthetic camera is {self.status.state}: call open() and start() first")
        if self.settings.parts is not None and self._index >= self.settings.parts:
            raise EndOfStream(f"end of stream: the synthetic run of {self.settings.parts} parts is over")
        self._pacer.wait(timeout_s=timeout_s)
        index = self._index
        if self._rendered:
            out, defect = self._rendered[index % len(self._rendered)]
        else:
            out, defect = self._render(index)
        timestamp_s = time.monotonic()
        self._pacer.delivered(timestamp_s=timestamp_s)
        self._index += 1
        pixels = out.image  # pre-rendered parts are read-only: the consumer copies (Frame.detach)
        if self.settings.pixel_format == "mono8":
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        mask = np.asarray(out.mask, dtype=np.uint8)
        frame = Frame(
            frame_id=index,
            timestamp_s=timestamp_s,
            pixels=pixels,
            part_id=f"P{index:06d}",
            source=f"synthetic:{self.settings.product}",
            truth={
                "defective": defect is not None,
                "defect": defect,
                "mask": mask,
                "product": out.product,
            },
        )
        self.status.frames_delivered += 1
        return frame, None

    def stop(self) -> None:
        """Stop the line; the next start() goes on with the next part."""
        if self.status.state == "streaming":
            self.status.state = "open"

    def close(self) -> None:
        """Drop the renderer and the pre-rendered parts. Safe to call twice."""
        self._renderer = None
        self._rendered = []
        self.status.state = "closed"
