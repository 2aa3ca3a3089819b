"""The dark industrial theme: colours, sizes and the Qt style sheet, scaled to the screen height."""

from __future__ import annotations

BACKGROUND = "#14171a"
PANEL = "#1e2329"
PANEL_EDGE = "#2f363e"
TEXT = "#e8ecef"
MUTED = "#9aa5b1"
ACCENT = "#3d8bfd"

# Verdict and light colours; every use pairs them with text (never colour alone).
VERDICT_COLOURS = {"OK": "#1f9d55", "NG": "#d64545", "UNINSPECTED": "#d98e04", "": "#3a4149"}
VERDICT_SYMBOLS = {"OK": "\u2714 OK", "NG": "\u2716 NG", "UNINSPECTED": "? UNINSPECTED", "": "\u2013"}
LIGHT_COLOURS = {"ok": "#1f9d55", "warn": "#d98e04", "bad": "#d64545", "unknown": "#5c6670"}

MIN_TOUCH_PX = 48  # the smallest touch target (gloved fingers)


def scale_for(height_px: int) -> float:
    """Font and spacing scale: 1.0 at 800 px high, 1.35 at 1080 px."""
    return max(0.8, min(2.5, height_px / 800.0))


def style_sheet(scale: float) -> str:
    """The application style sheet at `scale` (see `scale_for`)."""
    base = round(16 * scale)
    touch = max(MIN_TOUCH_PX, round(MIN_TOUCH_PX * scale))
    return f"""
QWidget {{ background: {BACKGROUND}; color: {TEXT}; font-size: {base}px; }}
QFrame#panel, QWidget#panel {{ background: {PANEL}; border: 1px solid {PANEL_EDGE}; border-radius: 6px; }}
QLabel {{ background: transparent; }}
QLabel#muted {{ color: {MUTED}; }}
QLabel#tileValue {{ font-size: {round(34 * scale)}px; font-weight: bold; }}
QLabel#tileTitle {{ color: {MUTED}; font-size: {round(13 * scale)}px; }}
QLabel#heading {{ font-size: {round(20 * scale)}px; font-weight: bold; }}
QPushButton, QToolButton {{
    background: #2b323a; border: 1px solid {PANEL_EDGE}; border-radius: 6px;
    min-height: {touch}px; min-width: {touch}px; padding: 0 {round(12 * scale)}px;
}}
QPushButton:pressed, QToolButton:pressed {{ background: {ACCENT}; }}
QPushButton:checked {{ background: #254b7a; border-color: {ACCENT}; }}
QPushButton:disabled {{ color: #5c6670; background: #22272d; }}
QPushButton#danger {{ background: #7a1f1f; }}
QPushButton#primary {{ background: #1d4f91; }}
QSlider {{ min-height: {touch}px; }}
QSlider::groove:horizontal {{ height: {round(8 * scale)}px; background: {PANEL_EDGE}; border-radius: 4px; }}
QSlider::handle:horizontal {{
    background: {ACCENT}; width: {touch}px; margin: -{touch // 2 - 4}px 0; border-radius: {touch // 2}px;
}}
QDoubleSpinBox, QComboBox, QLineEdit {{
    min-height: {touch}px; background: #0f1215; border: 1px solid {PANEL_EDGE}; border-radius: 4px;
    padding: 0 {round(8 * scale)}px;
}}
QTableWidget {{ background: #0f1215; gridline-color: {PANEL_EDGE}; }}
QHeaderView::section {{ background: {PANEL}; color: {MUTED}; border: none; padding: 4px; }}
QScrollBar:horizontal {{ height: {round(14 * scale)}px; background: {PANEL}; }}
QScrollBar::handle:horizontal {{ background: {PANEL_EDGE}; min-width: {touch}px; }}
"""
