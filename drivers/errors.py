"""The appliance's one exception base and the driver-level subclasses.

`ApplianceError` lives here, in the lowest layer, because every package may
import `drivers` and none may import `appliance`. The CLI turns any
`ApplianceError` into a single line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """An error a person can cause and fix: the message names the thing and the fix."""

    exit_code: int = 2


class CameraError(ApplianceError):
    """A camera could not be found, opened, configured or read."""


class OutputError(ApplianceError):
    """A line output (PLC, GPIO, log) could not be configured or reached."""
