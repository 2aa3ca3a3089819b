"""The station's widgets: frame view, verdict banner, counters, lights, trend, gallery, alarms, PIN pad.

Each widget draws what `appliance.gui.model` holds; none talks to the line.
Every tappable thing is at least `theme.MIN_TOUCH_PX` high and nothing depends
on hover (tool tips repeat what a tap shows).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from appliance.gui import theme
from appliance.gui.model import LIGHT_TITLES, LIGHTS, AlarmEntry, Counters, Light, Part, defect_label


def to_pixmap(rgb: np.ndarray, *, max_side_px: int) -> QtGui.QPixmap:
    """A scaled QPixmap of an RGB uint8 image (copied, so the array may go)."""
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    image = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
    pixmap = QtGui.QPixmap.fromImage(image)
    return pixmap.scaled(
        max_side_px,
        max_side_px,
        QtCore.Qt.AspectRatioMode.KeepAspectRatio,
        QtCore.Qt.TransformationMode.SmoothTransformation,
    )


def panel() -> QtWidgets.QFrame:
    frame = QtWidgets.QFrame()
    frame.setObjectName("panel")
    return frame


class _FitViewBox(pg.ViewBox):
    """A ViewBox that fits the image on a double click (or double tap)."""

    def mouseDoubleClickEvent(self, ev: Any) -> None:  # noqa: N802 (Qt's name)
        self.autoRange(padding=0.0)
        ev.accept()


class FrameView(QtWidgets.QWidget):
    """The frame with its heatmap overlay (toggle, opacity) and labelled defect boxes.

    Mouse: drag pans, wheel zooms, double click fits. Touch: one finger pans,
    pinch zooms, double tap fits.
    """

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = pg.GraphicsView(background=theme.BACKGROUND)
        self.box = _FitViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.box.setBackgroundColor(theme.BACKGROUND)
        self.view.setCentralItem(self.box)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.box.addItem(self.image)
        self.box.addItem(self.overlay)
        self.overlay.setZValue(1)
        self._box_items: list[QtWidgets.QGraphicsItem] = []
        self.overlay_visible = True
        self.opacity = 0.7
        self.shape: tuple[int, int] | None = None
        self.placeholder = QtWidgets.QLabel("waiting for the first frame", self)
        self.placeholder.setObjectName("muted")
        self.placeholder.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        layout = QtWidgets.QStackedLayout(self)
        layout.setStackingMode(QtWidgets.QStackedLayout.StackingMode.StackAll)
        layout.addWidget(self.placeholder)
        layout.addWidget(self.view)
        viewport = self.view.viewport()
        viewport.setAttribute(QtCore.Qt.WidgetAttribute.WA_AcceptTouchEvents, True)
        viewport.grabGesture(QtCore.Qt.GestureType.PinchGesture)
        viewport.installEventFilter(self)
        self.part: Part | None = None
        self.shown = 0  # images drawn

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802
        if event.type() == QtCore.QEvent.Type.Gesture:
            gesture = event.gesture(QtCore.Qt.GestureType.PinchGesture)  # type: ignore[attr-defined]
            if isinstance(gesture, QtWidgets.QPinchGesture):
                factor = gesture.scaleFactor()
                if factor > 0:
                    centre = self.box.mapSceneToView(self.view.mapToScene(gesture.centerPoint().toPoint()))
                    self.box.scaleBy((1.0 / factor, 1.0 / factor), center=centre)
                event.accept()
                return True
        return super().eventFilter(watched, event)

    def show_part(self, part: Part, *, fit: bool = False) -> None:
        """Draw `part`'s image, overlay and defect boxes (keeps the zoom unless `fit` or a new size)."""
        self.part = part
        image = part.image if part.image is not None else part.overlay
        if image is None:
            return
        self.placeholder.hide()
        self.shown += 1
        self.image.setImage(image, autoLevels=False, levels=(0, 255))
        if part.overlay is not None and part.overlay.shape == image.shape:
            self.overlay.setImage(part.overlay, autoLevels=False, levels=(0, 255))
            self.overlay.setVisible(self.overlay_visible)
        else:
            self.overlay.setVisible(False)
        self.overlay.setOpacity(self.opacity)
        shape = (int(image.shape[0]), int(image.shape[1]))
        self._draw_boxes(part, shape)
        if fit or shape != self.shape:
            self.shape = shape
            self.box.autoRange(padding=0.0)

    def _draw_boxes(self, part: Part, shape: tuple[int, int]) -> None:
        for item in self._box_items:
            self.box.removeItem(item)
        self._box_items = []
        frame_px = part.data.get("frame_px") or [shape[1], shape[0]]
        scale = shape[1] / max(1, int(frame_px[0]))
        pen = pg.mkPen("#ff40ff", width=2, cosmetic=True)
        for i, defect in enumerate(part.data.get("defects") or []):
            x, y = defect.get("x", 0) * scale, defect.get("y", 0) * scale
            w, h = max(1.0, defect.get("width", 1) * scale), max(1.0, defect.get("height", 1) * scale)
            rect = QtWidgets.QGraphicsRectItem(x, y, w, h)
            rect.setPen(pen)
            rect.setZValue(2)
            label = pg.TextItem(f"{i + 1}: {defect_label(defect)}", color="#ffffff", fill="#a01fa0cc")
            label.setAnchor((0, 1))
            label.setPos(x, y)
            label.setZValue(3)
            for item in (rect, label):
                self.box.addItem(item)
                self._box_items.append(item)

    def set_overlay_visible(self, visible: bool) -> None:
        self.overlay_visible = visible
        has_overlay = self.part is not None and self.part.overlay is not None
        self.overlay.setVisible(visible and has_overlay)

    def set_opacity(self, opacity: float) -> None:
        self.opacity = min(1.0, max(0.0, opacity))
        self.overlay.setOpacity(self.opacity)

    def fit(self) -> None:
        self.box.autoRange(padding=0.0)

    def zoom(self, factor: float) -> None:
        """Zoom in (>1) or out (<1) about the centre."""
        self.box.scaleBy((1.0 / factor, 1.0 / factor))


class VerdictBanner(QtWidgets.QFrame):
    """The last part's verdict in big letters with its colour, plus part id, score and reason."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("verdictBanner")
        self.verdict = QtWidgets.QLabel(theme.VERDICT_SYMBOLS[""])
        self.verdict.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.detail = QtWidgets.QLabel("no part yet")
        self.detail.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.detail.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.verdict, 3)
        layout.addWidget(self.detail, 1)
        self.scale = 1.0
        self.result = ""
        self._paint()

    def set_scale(self, scale: float) -> None:
        self.scale = scale
        self._paint()

    def show_part(self, part: Part | None, *, state: str = "running") -> None:
        if part is None:
            self.result = ""
            self.verdict.setText(theme.VERDICT_SYMBOLS[""])
            self.detail.setText("no part yet")
        else:
            self.result = part.verdict
            self.verdict.setText(theme.VERDICT_SYMBOLS.get(part.verdict, part.verdict))
            d = part.data
            score = d.get("score")
            bits = [f"part {part.title}"]
            if score is not None:
                bits.append(f"score {score:.2f}")
            if d.get("defects"):
                bits.append(f"{len(d['defects'])} defect(s)")
            if d.get("reason"):
                bits.append(str(d["reason"]))
            self.detail.setText(" \u00b7 ".join(bits))
        if state in ("paused", "disconnected", "stopped"):
            self.detail.setText(f"LINE {state.upper()} \u00b7 " + self.detail.text())
        self._paint()

    def text(self) -> str:
        return self.verdict.text()

    def _paint(self) -> None:
        colour = theme.VERDICT_COLOURS.get(self.result, theme.VERDICT_COLOURS[""])
        # A long word gets a smaller font so it still fits; at 1280x800 "NG" is ~100 px high.
        size = round((104 if len(self.verdict.text()) <= 5 else 52) * self.scale)
        self.setStyleSheet(
            f"QFrame#verdictBanner {{ background: {colour}; border-radius: 8px; }}"
            f"QLabel {{ color: white; font-weight: bold; }}"
        )
        self.verdict.setStyleSheet(f"font-size: {size}px;")
        self.detail.setStyleSheet(f"font-size: {round(16 * self.scale)}px;")


class CounterTiles(QtWidgets.QWidget):
    """Shift counters: total, NG, UNINSPECTED, yield %."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.values: dict[str, QtWidgets.QLabel] = {}
        for col, (key, title) in enumerate(
            (("total", "TOTAL"), ("ng", "NG"), ("uninspected", "UNINSPECTED"), ("yield", "YIELD"))
        ):
            tile = panel()
            inner = QtWidgets.QVBoxLayout(tile)
            head = QtWidgets.QLabel(title)
            head.setObjectName("tileTitle")
            value = QtWidgets.QLabel("0")
            value.setObjectName("tileValue")
            inner.addWidget(head)
            inner.addWidget(value)
            layout.addWidget(tile, 0, col)
            self.values[key] = value
        self.since = QtWidgets.QLabel("")
        self.since.setObjectName("muted")
        layout.addWidget(self.since, 1, 0, 1, 4)

    def show_counters(self, counters: Counters, *, since_wall_s: float) -> None:
        self.values["total"].setText(str(counters.total))
        self.values["ng"].setText(str(counters.ng))
        self.values["uninspected"].setText(str(counters.uninspected))
        y = counters.yield_pct
        self.values["yield"].setText("\u2013" if y is None else f"{y:.1f} %")
        self.since.setText(f"shift since {time.strftime('%H:%M', time.localtime(since_wall_s))}")

    def value(self, key: str) -> str:
        return self.values[key].text()


class StatusLights(QtWidgets.QWidget):
    """Camera, model, PLC and records lights; a tap shows the reason below them."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.buttons: dict[str, QtWidgets.QPushButton] = {}
        self.lights: dict[str, Light] = {name: Light("unknown", "?", "no status yet") for name in LIGHTS}
        for col, name in enumerate(LIGHTS):
            button = QtWidgets.QPushButton()
            button.clicked.connect(lambda _=False, n=name: self.select(n))
            layout.addWidget(button, 0, col)
            self.buttons[name] = button
        self.reason = QtWidgets.QLabel("tap a light for its reason")
        self.reason.setObjectName("muted")
        self.reason.setWordWrap(True)
        layout.addWidget(self.reason, 1, 0, 1, len(LIGHTS))
        self.selected: str | None = None
        self.show_lights(self.lights)

    def show_lights(self, lights: dict[str, Light]) -> None:
        self.lights = lights
        for name, button in self.buttons.items():
            light = lights[name]
            colour = theme.LIGHT_COLOURS[light.level]
            button.setText(f"\u25cf {LIGHT_TITLES[name]}: {light.text}")
            button.setToolTip(light.reason)
            button.setStyleSheet(f"QPushButton {{ color: {colour}; font-weight: bold; }}")
        if self.selected is not None:
            self.select(self.selected)

    def select(self, name: str) -> None:
        self.selected = name
        self.reason.setText(f"{LIGHT_TITLES[name]}: {self.lights[name].reason}")


class TrendPlot(pg.PlotWidget):
    """Image scores over the last parts, with the threshold line (1.0 on the calibrated scale)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, background=theme.PANEL)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.showGrid(x=False, y=True, alpha=0.2)
        self.setLabel("left", "score")
        self.getPlotItem().getAxis("bottom").setStyle(showValues=False)
        self.curve = self.plot([], [], pen=pg.mkPen(theme.MUTED, width=1))
        self.points: dict[str, pg.ScatterPlotItem] = {}
        for verdict, symbol in (("OK", "o"), ("NG", "x"), ("UNINSPECTED", "t")):
            item = pg.ScatterPlotItem(
                size=7, symbol=symbol, pen=None, brush=pg.mkBrush(theme.VERDICT_COLOURS[verdict])
            )
            self.addItem(item)
            self.points[verdict] = item
        self.threshold = pg.InfiniteLine(
            pos=1.0,
            angle=0,
            pen=pg.mkPen("#d64545", width=2, style=QtCore.Qt.PenStyle.DashLine),
            label="threshold",
            labelOpts={"color": "#d64545", "position": 0.05},
        )
        self.addItem(self.threshold)
        self.setYRange(0, 2)

    def show_trend(self, trend: Any) -> None:
        if not trend:
            return
        xs = np.fromiter((t[0] for t in trend), float, len(trend))
        ys = np.fromiter((t[1] for t in trend), float, len(trend))
        verdicts = [t[2] for t in trend]
        self.curve.setData(xs, ys)
        for verdict, item in self.points.items():
            mask = np.array([v == verdict for v in verdicts])
            item.setData(xs[mask], ys[mask])
        top = max(2.0, float(np.nanmax(ys)) * 1.1) if len(ys) else 2.0
        self.setYRange(0, top, padding=0)
        self.setXRange(xs[0], max(xs[-1], xs[0] + 1), padding=0.02)


class Gallery(QtWidgets.QScrollArea):
    """The last NG parts as thumbnails; a tap opens the inspection view (`opened` signal)."""

    opened = QtCore.Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QtWidgets.QWidget()
        self.row = QtWidgets.QHBoxLayout(inner)
        self.row.setContentsMargins(4, 4, 4, 4)
        self.empty = QtWidgets.QLabel("no NG parts this session")
        self.empty.setObjectName("muted")
        self.row.addWidget(self.empty)
        self.row.addStretch(1)
        self.setWidget(inner)
        self.buttons: list[QtWidgets.QToolButton] = []
        self.thumb_px = 96

    def show_parts(self, parts: list[Part]) -> None:
        for button in self.buttons:
            self.row.removeWidget(button)
            button.deleteLater()
        self.buttons = []
        self.empty.setVisible(not parts)
        for i, part in enumerate(parts):
            button = QtWidgets.QToolButton()
            button.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
            image = part.overlay if part.overlay is not None else part.image
            if image is not None:
                button.setIcon(QtGui.QIcon(to_pixmap(image, max_side_px=self.thumb_px)))
                button.setIconSize(QtCore.QSize(self.thumb_px, self.thumb_px))
            score = part.data.get("score")
            button.setText(f"NG {part.title}" + ("" if score is None else f"\n{score:.2f}"))
            button.clicked.connect(lambda _=False, n=i: self.opened.emit(n))
            self.row.insertWidget(i, button)
            self.buttons.append(button)


class AlarmBanner(QtWidgets.QFrame):
    """Alarms not acknowledged yet, in a red band with an ACKNOWLEDGE button; hidden when none."""

    acknowledge = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("alarmBanner")
        self.setStyleSheet(
            "QFrame#alarmBanner { background: #8f1d1d; border-radius: 6px; } "
            "QLabel { color: white; font-weight: bold; }"
        )
        layout = QtWidgets.QHBoxLayout(self)
        self.label = QtWidgets.QLabel("")
        self.label.setWordWrap(True)
        self.button = QtWidgets.QPushButton("ACKNOWLEDGE (A)")
        self.button.setObjectName("primary")
        self.button.clicked.connect(self.acknowledge.emit)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.button)
        self.alarms: list[AlarmEntry] = []
        self.setVisible(False)

    def show_alarms(self, alarms: list[AlarmEntry]) -> None:
        self.alarms = alarms
        if not alarms:
            self.setVisible(False)
            return
        first = alarms[0]
        state = "ACTIVE" if first.active else "cleared"
        more = f"  (+{len(alarms) - 1} more)" if len(alarms) > 1 else ""
        clock = time.strftime("%H:%M:%S", time.localtime(first.raised_wall_s))
        self.label.setText(
            f"\u26a0 ALARM {first.severity.upper()} \u00b7 {first.source} \u00b7 {first.message} "
            f"\u00b7 {state} since {clock}{more}"
        )
        self.setVisible(True)


class PinPad(QtWidgets.QWidget):
    """A touch keypad for the engineer PIN (digits are never shown)."""

    entered = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.pin = ""
        layout = QtWidgets.QGridLayout(self)
        self.display = QtWidgets.QLabel("enter the engineer PIN")
        self.display.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.display.setObjectName("heading")
        layout.addWidget(self.display, 0, 0, 1, 3)
        keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "\u232b", "0", "OK"]
        for i, key in enumerate(keys):
            button = QtWidgets.QPushButton(key)
            button.setMinimumSize(theme.MIN_TOUCH_PX * 2, theme.MIN_TOUCH_PX + 16)
            if key == "OK":
                button.setObjectName("primary")
            button.clicked.connect(lambda _=False, k=key: self.press(k))
            layout.addWidget(button, 1 + i // 3, i % 3)

    def press(self, key: str) -> None:
        if key == "OK":
            pin, self.pin = self.pin, ""
            self._show()
            self.entered.emit(pin)
            return
        if key == "\u232b":
            self.pin = self.pin[:-1]
        elif key.isdigit() and len(self.pin) < 12:
            self.pin += key
        self._show()

    def _show(self) -> None:
        self.display.setText("\u25cf " * len(self.pin) if self.pin else "enter the engineer PIN")
