"""Errors of the calibration package: data that cannot set a threshold, a flat-field or a scale."""

from __future__ import annotations

from drivers.errors import ApplianceError


class CalibrationError(ApplianceError):
    """Calibration data or a calibration setting is unusable; the message names it and the fix."""
