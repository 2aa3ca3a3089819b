"""The `gui` section of the configuration: the operator station's role PIN, kiosk mode and sizes.

Qt-free, so `aoi config validate` checks it on a machine without a display.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from drivers.settings import Settings


class GuiSettings(Settings):
    """The operator station (`aoi gui`)."""

    engineer_pin_hash: str | None = Field(
        default=None,
        description="hash of the engineer PIN (text 'scrypt$n$r$p$salt$hash', made by 'aoi gui "
        "--hash-pin'); unset: engineer functions stay locked",
    )
    station: str = Field(
        default="station",
        min_length=1,
        max_length=48,
        description="name of this station, written as the user of its actions in the audit log (text)",
    )
    kiosk: bool = Field(default=False, description="full screen, no window frame, no way to close by mouse")
    width_px: int = Field(
        default=1280, ge=800, le=7680, description="window width when not in kiosk mode (px)"
    )
    height_px: int = Field(
        default=800, ge=480, le=4320, description="window height when not in kiosk mode (px)"
    )
    engineer_timeout_s: float = Field(
        default=300.0, gt=0, le=86_400, description="the engineer role locks itself after this long idle (s)"
    )
    gallery_size: int = Field(
        default=12, ge=1, le=100, description="last NG parts kept in the gallery (count)"
    )
    trend_points: int = Field(
        default=600, ge=10, le=100_000, description="scores shown in the trend plot (count)"
    )
    status_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the station asks the line for its status (s)"
    )
    bundles: list[Path] = Field(
        default_factory=list,
        description="bundle directories offered for a switch (paths on the machine that runs the line)",
    )

    @field_validator("engineer_pin_hash")
    @classmethod
    def _verify_pin_hash(cls, value: str | None) -> str | None:
        if value is not None:
            from appliance.gui.pin import parse_pin_hash

            parse_pin_hash(value)
        return value
