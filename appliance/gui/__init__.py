"""The operator station: a touch-first PySide6 + pyqtgraph GUI that is a client of the line.

`aoi gui --attach URL` shows a running service through its control endpoint;
`aoi gui --config FILE` runs the line in this process. Either way the line
never waits for the GUI: events reach the Qt thread through a bounded buffer
(`stream.py`) that drops display frames, never verdicts, when the GUI lags.

This package's `settings`, `pin` and `stream` modules are Qt-free; `window`
and its widgets import Qt, so a headless appliance never needs it.
"""

from __future__ import annotations

from appliance.errors import ConfigError


def require_qt() -> None:
    """Import PySide6 and pyqtgraph, or raise a one-line error saying how to install them."""
    try:
        import pyqtgraph  # noqa: F401
        from PySide6 import QtWidgets  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the operator GUI needs PySide6 and pyqtgraph ({exc}); install them with: pip install '.[gui]'"
        ) from exc
