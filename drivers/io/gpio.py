"""GPIO output: the reject pulse on a digital output line (an opto-isolated input of the ejector
or of the PLC), and optionally a heartbeat on a second line.

Two backends:

- ``gpiod`` (default): the Linux GPIO character device through libgpiod v2's
  Python binding (`pip install '.[gpio]'`, gpiod >= 2.2). Lines are requested
  with ``active_low`` from the settings and start inactive, so the ejector does
  not fire when the appliance starts.
- ``jetson``: NVIDIA's Jetson.GPIO (board or BCM pin numbers), for JetPack
  images where the user is set up for it (`pip install Jetson.GPIO`). The
  polarity is applied here, since Jetson.GPIO has no active-low flag.

The pulse timing (hold `pulse_ms`, gap `pulse_gap_ms`) is the shared worker's
(`drivers.io.base`); this module only drives lines through the small `GpioLine`
interface, which tests replace with an in-memory line.

A GPIO line has no room for data: result, frame id and score are logged at
DEBUG and not sent.
"""

from __future__ import annotations

import abc
import glob
import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.errors import OutputError
from drivers.io.base import Output, OutputSettings, require_module
from drivers.verdict import Verdict

log = logging.getLogger(__name__)


class GpioOutputSettings(OutputSettings):
    """Which lines carry the reject pulse and the heartbeat, and their polarity."""

    type: Literal["gpio"] = Field(default="gpio", description="Selects the GPIO output.")
    backend: Literal["gpiod", "jetson"] = Field(
        default="gpiod", description="gpiod: Linux GPIO character device (libgpiod v2); jetson: Jetson.GPIO."
    )
    chip: str = Field(default="/dev/gpiochip0", description="GPIO chip device path (gpiod backend).")
    line: int = Field(
        ge=0, description="Reject line: offset on the chip (gpiod) or pin number (jetson, see pin_mode)."
    )
    active_low: bool = Field(
        default=False,
        description="True when the reject is active at low level (e.g. a sinking output stage); "
        "the idle level is then high.",
    )
    heartbeat_line: int | None = Field(
        default=None,
        ge=0,
        description="Optional line that toggles every heartbeat_period_ms; none: no heartbeat line.",
    )
    pin_mode: Literal["BOARD", "BCM"] = Field(
        default="BOARD",
        description="Pin numbering of the jetson backend: header pin (BOARD) or Broadcom-style (BCM).",
    )
    consumer: str = Field(
        default="aoi-reject", description="Consumer label shown by gpioinfo for the requested lines."
    )

    @model_validator(mode="after")
    def _verify_gpio(self) -> GpioOutputSettings:
        verify_distinct_lines(self)
        return self


def verify_distinct_lines(settings: GpioOutputSettings) -> None:
    """The heartbeat needs its own line."""
    if settings.heartbeat_line is not None and settings.heartbeat_line == settings.line:
        raise ValueError(
            f"heartbeat_line ({settings.heartbeat_line}) must differ from line ({settings.line})"
        )


class GpioLine(abc.ABC):
    """One output line in logical terms: `set_active(True)` drives the active level."""

    @abc.abstractmethod
    def set_active(self, active: bool) -> None:
        """Drive the line to its active (True) or inactive (False) level."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the line back (it keeps its last level or floats, depending on the chip)."""


#: Builds the line for (settings, line number, active_low, role). Role is "reject" or "heartbeat".
LineFactory = Callable[[GpioOutputSettings, int, bool, str], GpioLine]


class GpiodLine(GpioLine):
    """A line requested through libgpiod v2 (``gpiod.request_lines``), starting inactive."""

    def __init__(self, *, chip: str, offset: int, active_low: bool, consumer: str) -> None:
        import gpiod
        from gpiod.line import Direction, Value

        self._offset = offset
        self._active, self._inactive = Value.ACTIVE, Value.INACTIVE
        # The kernel maps active/inactive to levels with active_low, and output_value makes the
        # very first level the inactive one: no glitch on the ejector at start-up.
        self._request = gpiod.request_lines(
            chip,
            consumer=consumer,
            config={
                offset: gpiod.LineSettings(
                    direction=Direction.OUTPUT, active_low=active_low, output_value=Value.INACTIVE
                )
            },
        )

    def set_active(self, active: bool) -> None:
        """Set the logical value; the kernel applies the polarity."""
        self._request.set_value(self._offset, self._active if active else self._inactive)

    def release(self) -> None:
        """Release the line request (closes its file descriptor)."""
        self._request.release()


def jetson_level(active: bool, *, active_low: bool) -> bool:
    """The electrical level (True = high) for a logical value and polarity."""
    return active != active_low


class JetsonGpioLine(GpioLine):
    """A pin driven through Jetson.GPIO; polarity applied here."""

    def __init__(self, *, pin: int, active_low: bool, pin_mode: str) -> None:
        import Jetson.GPIO as GPIO

        self._gpio: Any = GPIO
        self._pin = pin
        self._active_low = active_low
        mode = GPIO.BOARD if pin_mode == "BOARD" else GPIO.BCM
        current = GPIO.getmode()
        if current is None:
            GPIO.setmode(mode)
        elif current != mode:
            # The numbering is process-wide in Jetson.GPIO; mixing them would drive the wrong pin.
            raise OutputError(
                f"Jetson.GPIO already uses another pin numbering than {pin_mode}; align output.pin_mode"
            )
        GPIO.setwarnings(False)
        initial = GPIO.HIGH if jetson_level(False, active_low=active_low) else GPIO.LOW
        GPIO.setup(pin, GPIO.OUT, initial=initial)

    def set_active(self, active: bool) -> None:
        """Drive the electrical level that means `active` for this polarity."""
        level = jetson_level(active, active_low=self._active_low)
        self._gpio.output(self._pin, self._gpio.HIGH if level else self._gpio.LOW)

    def release(self) -> None:
        """Return the pin to an input (Jetson.GPIO's cleanup)."""
        self._gpio.cleanup(self._pin)


def default_line_factory(settings: GpioOutputSettings, number: int, active_low: bool, role: str) -> GpioLine:
    """Build a real line with the configured backend."""
    if settings.backend == "jetson":
        return JetsonGpioLine(pin=number, active_low=active_low, pin_mode=settings.pin_mode)
    return GpiodLine(
        chip=settings.chip, offset=number, active_low=active_low, consumer=f"{settings.consumer}-{role}"
    )


class GpioOutput(Output):
    """The reject pulse (and heartbeat) on GPIO lines.

    `line_factory` replaces the hardware lines (tests pass an in-memory line);
    by default lines come from the configured backend.
    """

    type_name: ClassVar[str] = "gpio"
    settings_class: ClassVar[type[OutputSettings]] = GpioOutputSettings
    settings: GpioOutputSettings

    def __init__(self, settings: GpioOutputSettings, *, line_factory: LineFactory | None = None) -> None:
        super().__init__(settings)
        self._factory = line_factory
        self._reject: GpioLine | None = None
        self._beat: GpioLine | None = None

    def target(self) -> str:
        """``chip line N`` or ``jetson pin N``."""
        s = self.settings
        where = f"{s.chip} line" if s.backend == "gpiod" else f"jetson {s.pin_mode} pin"
        return f"{where} {s.line}"

    def _prepare(self) -> None:
        if self._factory is not None:
            return
        s = self.settings
        if s.backend == "jetson":
            require_module("Jetson.GPIO", output_type="gpio", package="Jetson.GPIO", extra=None)
            return
        require_module("gpiod", output_type="gpio", package="gpiod", extra="gpio")
        if not os.path.exists(s.chip):
            chips = sorted(glob.glob("/dev/gpiochip*"))
            raise OutputError(
                f"output.chip={s.chip} does not exist; chips on this machine: {', '.join(chips) or 'none'}"
            )

    def _open(self) -> None:
        factory = self._factory or default_line_factory
        s = self.settings
        self._reject = factory(s, s.line, s.active_low, "reject")
        if s.heartbeat_line is not None and s.heartbeat_period_ms > 0:
            self._beat = factory(s, s.heartbeat_line, False, "heartbeat")

    def _send(self, verdict: Verdict) -> None:
        log.debug(
            "%s: frame %d result %s (code %d) score %.3f; only the reject line is driven",
            self.name,
            verdict.frame_id,
            verdict.result.value,
            verdict.result.code,
            verdict.score,
        )

    def _set_reject(self, active: bool) -> None:
        if self._reject is None:
            raise ConnectionError("reject line is not requested")
        self._reject.set_active(active)

    def _heartbeat(self, state: bool) -> None:
        if self._beat is not None:
            self._beat.set_active(state)

    def _close_transport(self) -> None:
        for line in (self._reject, self._beat):
            if line is not None:
                try:
                    line.release()
                except Exception:  # releasing must not stop the other line's release
                    log.debug("%s: releasing a GPIO line failed", self.name, exc_info=True)
        self._reject = self._beat = None
