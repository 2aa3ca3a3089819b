"""The station window: the main screen, the NG inspection screen and the engineer screen.

`StationWindow(source, settings)` starts the source's threads and drains its
`EventBuffer` on the Qt thread whenever the buffer signals (a queued Qt
signal from the source threads). Per drain, every verdict updates the
counters, trend and gallery, but only the newest display image is drawn:
the others count as dropped display frames. Engineer functions (threshold,
bundle, pause/resume, new shift) need the PIN; a locked station refuses them
and says so, and the line audit-logs the ones it performs.

Keys (bench setups): H heatmap, [ and ] opacity, F fit, + and - zoom, A
acknowledge alarms, I inspect the newest NG part, E engineer screen, Escape
back to the main screen, Space pause/resume (engineer), F11 full screen,
Ctrl+Q quit (not in kiosk mode).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from appliance.gui import theme
from appliance.gui.model import Part, StationModel
from appliance.gui.pin import verify_pin
from appliance.gui.settings import GuiSettings
from appliance.gui.stream import Action, EventBuffer, Source
from appliance.gui.widgets import (
    AlarmBanner,
    CounterTiles,
    FrameView,
    Gallery,
    PinPad,
    StatusLights,
    TrendPlot,
    VerdictBanner,
    panel,
)

log = logging.getLogger(__name__)

PAGES = ("main", "inspect", "engineer")


class _Bridge(QtCore.QObject):
    """Carries "events waiting" from the source threads to the Qt thread (a queued connection)."""

    ready = QtCore.Signal()


class StationWindow(QtWidgets.QMainWindow):
    """The operator station for one line (`source`)."""

    def __init__(
        self,
        source: Source,
        settings: GuiSettings | None = None,
        *,
        start: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings or GuiSettings()
        self.source = source
        self.model = StationModel(
            gallery_size=self.settings.gallery_size, trend_points=self.settings.trend_points
        )
        self.buffer = EventBuffer(ng_keep=self.settings.gallery_size)
        self.engineer = False
        self._engineer_since = 0.0
        self._last_touch = time.monotonic()
        self.display_skipped = 0  # display images in a drain that were not the newest
        self.drains = 0
        self.inspect_index = 0
        self._scale = 0.0
        self._allow_close = not self.settings.kiosk
        self._closed = False
        self.setWindowTitle(f"AOI station \u00b7 {source.description}")
        self._build()
        self._bridge = _Bridge()
        self._bridge.ready.connect(self.drain, QtCore.Qt.ConnectionType.QueuedConnection)
        self.buffer.set_notify(self._bridge.ready.emit)
        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(500)
        self.resize(self.settings.width_px, self.settings.height_px)
        self._apply_scale()
        self._shortcuts()
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.installEventFilter(self)
        if self.settings.kiosk:
            self.setWindowFlag(QtCore.Qt.WindowType.FramelessWindowHint, True)
        if start:
            self.source.start(self.buffer)

    # --------------------------------------------------------------- layout

    def _build(self) -> None:
        root = QtWidgets.QWidget()
        outer = QtWidgets.QVBoxLayout(root)
        outer.setContentsMargins(8, 8, 8, 8)
        self.alarm_banner = AlarmBanner()
        self.alarm_banner.acknowledge.connect(self.acknowledge_alarms)
        outer.addWidget(self.alarm_banner)
        self.pages = QtWidgets.QStackedWidget()
        self.pages.addWidget(self._main_page())
        self.pages.addWidget(self._inspect_page())
        self.pages.addWidget(self._engineer_page())
        outer.addWidget(self.pages, 1)
        outer.addWidget(self._bottom_bar())
        self.setCentralWidget(root)
        self._show_role()

    def _main_page(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(page)
        grid.setContentsMargins(0, 0, 0, 0)
        left = QtWidgets.QVBoxLayout()
        self.frame_view = FrameView()
        left.addWidget(self.frame_view, 1)
        tools = QtWidgets.QHBoxLayout()
        self.heatmap_button = QtWidgets.QPushButton("Heatmap (H)")
        self.heatmap_button.setCheckable(True)
        self.heatmap_button.setChecked(True)
        self.heatmap_button.toggled.connect(self.set_heatmap_visible)
        self.opacity = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(70)
        self.opacity.valueChanged.connect(lambda v: self._set_opacity(v / 100.0))
        fit = QtWidgets.QPushButton("Fit (F)")
        fit.clicked.connect(self.frame_view.fit)
        zoom_in, zoom_out = QtWidgets.QPushButton("+"), QtWidgets.QPushButton("\u2212")
        zoom_in.clicked.connect(lambda: self.frame_view.zoom(1.5))
        zoom_out.clicked.connect(lambda: self.frame_view.zoom(1 / 1.5))
        opacity_label = QtWidgets.QLabel("opacity")
        opacity_label.setObjectName("muted")
        for widget in (self.heatmap_button, opacity_label):
            tools.addWidget(widget)
        tools.addWidget(self.opacity, 1)
        for widget in (zoom_out, zoom_in, fit):
            tools.addWidget(widget)
        left.addLayout(tools)
        right = QtWidgets.QVBoxLayout()
        self.banner = VerdictBanner()
        right.addWidget(self.banner, 3)
        self.counters = CounterTiles()
        right.addWidget(self.counters)
        self.stats = QtWidgets.QLabel("latency \u2013 \u00b7 rate \u2013")
        self.stats.setObjectName("muted")
        self.stats.setWordWrap(True)
        right.addWidget(self.stats)
        self.lights = StatusLights()
        right.addWidget(self.lights)
        self.trend = TrendPlot()
        right.addWidget(self.trend, 2)
        top = QtWidgets.QHBoxLayout()
        top.addLayout(left, 11)
        top.addLayout(right, 9)
        grid.addLayout(top, 0, 0)
        gallery_box = QtWidgets.QHBoxLayout()
        caption = QtWidgets.QLabel("Last NG\nparts")
        caption.setObjectName("muted")
        gallery_box.addWidget(caption)
        self.gallery = Gallery()
        self.gallery.opened.connect(self.inspect)
        gallery_box.addWidget(self.gallery, 1)
        grid.addLayout(gallery_box, 1, 0)
        grid.setRowStretch(0, 1)
        return page

    def _inspect_page(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        self.inspect_view = FrameView()
        layout.addWidget(self.inspect_view, 3)
        side = QtWidgets.QVBoxLayout()
        self.inspect_title = QtWidgets.QLabel("")
        self.inspect_title.setObjectName("heading")
        self.inspect_title.setWordWrap(True)
        side.addWidget(self.inspect_title)
        self.inspect_info = QtWidgets.QLabel("")
        self.inspect_info.setWordWrap(True)
        side.addWidget(self.inspect_info)
        self.inspect_resolution = QtWidgets.QLabel("")
        self.inspect_resolution.setObjectName("muted")
        side.addWidget(self.inspect_resolution)
        self.defect_table = QtWidgets.QTableWidget(0, 4)
        self.defect_table.setHorizontalHeaderLabels(["#", "size", "area", "peak"])
        self.defect_table.verticalHeader().setVisible(False)
        self.defect_table.horizontalHeader().setStretchLastSection(True)
        self.defect_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        side.addWidget(self.defect_table, 1)
        heat = QtWidgets.QPushButton("Heatmap (H)")
        heat.setCheckable(True)
        heat.setChecked(True)
        heat.toggled.connect(self.set_heatmap_visible)
        self.inspect_heatmap_button = heat
        nav = QtWidgets.QHBoxLayout()
        self.prev_button = QtWidgets.QPushButton("\u25c0 newer")
        self.next_button = QtWidgets.QPushButton("older \u25b6")
        self.prev_button.clicked.connect(lambda: self.inspect(self.inspect_index - 1))
        self.next_button.clicked.connect(lambda: self.inspect(self.inspect_index + 1))
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        back = QtWidgets.QPushButton("Back to line (Esc)")
        back.setObjectName("primary")
        back.clicked.connect(lambda: self.show_page("main"))
        side.addWidget(heat)
        side.addLayout(nav)
        side.addWidget(back)
        layout.addLayout(side, 2)
        return page

    def _engineer_page(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(page)
        self.pin_pad = PinPad()
        self.pin_pad.entered.connect(self.unlock)
        layout.addWidget(self.pin_pad, 2)
        box = panel()
        form = QtWidgets.QGridLayout(box)
        self.role_label = QtWidgets.QLabel("")
        self.role_label.setObjectName("heading")
        form.addWidget(self.role_label, 0, 0, 1, 3)
        form.addWidget(QtWidgets.QLabel("Image threshold\n(calibrated units)"), 1, 0)
        self.threshold_spin = QtWidgets.QDoubleSpinBox()
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setRange(0.001, 1000.0)
        self.threshold_spin.setSingleStep(0.05)
        form.addWidget(self.threshold_spin, 1, 1)
        self.threshold_button = QtWidgets.QPushButton("Apply threshold")
        self.threshold_button.setObjectName("primary")
        self.threshold_button.clicked.connect(lambda: self.request_threshold(self.threshold_spin.value()))
        form.addWidget(self.threshold_button, 1, 2)
        form.addWidget(QtWidgets.QLabel("Bundle / recipe"), 2, 0)
        self.bundle_combo = QtWidgets.QComboBox()
        self.bundle_combo.setEditable(True)
        self.bundle_combo.addItems([str(p) for p in self.settings.bundles])
        form.addWidget(self.bundle_combo, 2, 1)
        self.bundle_button = QtWidgets.QPushButton("Switch bundle")
        self.bundle_button.clicked.connect(lambda: self.request_bundle(self.bundle_combo.currentText()))
        form.addWidget(self.bundle_button, 2, 2)
        self.pause_button = QtWidgets.QPushButton("Pause line (Space)")
        self.pause_button.setObjectName("danger")
        self.pause_button.clicked.connect(self.toggle_pause)
        form.addWidget(self.pause_button, 3, 0, 1, 2)
        self.shift_button = QtWidgets.QPushButton("New shift: counters to 0")
        self.shift_button.clicked.connect(self.request_new_shift)
        form.addWidget(self.shift_button, 3, 2)
        self.lock_button = QtWidgets.QPushButton("Lock engineer role")
        self.lock_button.clicked.connect(self.lock)
        form.addWidget(self.lock_button, 4, 0, 1, 2)
        self.exit_button = QtWidgets.QPushButton("Close station")
        self.exit_button.clicked.connect(self.request_exit)
        form.addWidget(self.exit_button, 4, 2)
        self.audit_note = QtWidgets.QLabel(
            "Threshold, bundle and pause/resume are written to the audit log with this station's "
            "name and the engineer role."
        )
        self.audit_note.setObjectName("muted")
        self.audit_note.setWordWrap(True)
        form.addWidget(self.audit_note, 5, 0, 1, 3)
        form.setRowStretch(6, 1)
        layout.addWidget(box, 3)
        self._engineer_controls = (
            self.threshold_spin,
            self.threshold_button,
            self.bundle_combo,
            self.bundle_button,
            self.pause_button,
            self.shift_button,
            self.lock_button,
            self.exit_button,
        )
        return page

    def _bottom_bar(self) -> QtWidgets.QWidget:
        bar = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(bar)
        row.setContentsMargins(0, 4, 0, 0)
        self.state_label = QtWidgets.QLabel("connecting")
        self.state_label.setObjectName("heading")
        row.addWidget(self.state_label)
        self.line_label = QtWidgets.QLabel("")
        self.line_label.setObjectName("muted")
        row.addWidget(self.line_label, 1)
        self.message_label = QtWidgets.QLabel("")
        self.message_label.setWordWrap(True)
        row.addWidget(self.message_label, 2)
        self.main_button = QtWidgets.QPushButton("Line")
        self.main_button.clicked.connect(lambda: self.show_page("main"))
        self.engineer_button = QtWidgets.QPushButton("Engineer (E)")
        self.engineer_button.clicked.connect(lambda: self.show_page("engineer"))
        row.addWidget(self.main_button)
        row.addWidget(self.engineer_button)
        return bar

    def _shortcuts(self) -> None:
        keys: list[tuple[str, Any]] = [
            ("H", lambda: self.set_heatmap_visible(not self.frame_view.overlay_visible)),
            ("[", lambda: self.opacity.setValue(self.opacity.value() - 10)),
            ("]", lambda: self.opacity.setValue(self.opacity.value() + 10)),
            ("F", self._fit_current),
            ("+", lambda: self._current_view().zoom(1.5)),
            ("-", lambda: self._current_view().zoom(1 / 1.5)),
            ("A", self.acknowledge_alarms),
            ("I", lambda: self.inspect(0)),
            ("E", lambda: self.show_page("engineer")),
            ("Escape", lambda: self.show_page("main")),
            ("Space", self.toggle_pause),
            ("F11", self.toggle_full_screen),
            ("Ctrl+Q", self.request_exit),
        ]
        for key, slot in keys:
            shortcut = QtGui.QShortcut(QtGui.QKeySequence(key), self)
            shortcut.setContext(QtCore.Qt.ShortcutContext.ApplicationShortcut)
            shortcut.activated.connect(slot)

    # --------------------------------------------------------------- look

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._apply_scale()

    def _apply_scale(self) -> None:
        scale = round(theme.scale_for(self.height()), 2)
        if abs(scale - self._scale) < 0.05:
            return
        self._scale = scale
        self.setStyleSheet(theme.style_sheet(scale))
        self.banner.set_scale(scale)
        self.gallery.thumb_px = round(96 * scale)
        self.gallery.setFixedHeight(round(150 * scale))
        self.trend.setMinimumHeight(round(120 * scale))

    def _current_view(self) -> FrameView:
        return self.inspect_view if self.current_page() == "inspect" else self.frame_view

    def _fit_current(self) -> None:
        self._current_view().fit()

    def set_heatmap_visible(self, visible: bool) -> None:
        for view in (self.frame_view, self.inspect_view):
            view.set_overlay_visible(visible)
        for button in (self.heatmap_button, self.inspect_heatmap_button):
            if button.isChecked() != visible:
                button.blockSignals(True)
                button.setChecked(visible)
                button.blockSignals(False)

    def _set_opacity(self, opacity: float) -> None:
        for view in (self.frame_view, self.inspect_view):
            view.set_opacity(opacity)

    def toggle_full_screen(self) -> None:
        if self.isFullScreen() and not self.settings.kiosk:
            self.showNormal()
        else:
            self.showFullScreen()

    def current_page(self) -> str:
        return PAGES[self.pages.currentIndex()]

    def show_page(self, name: str) -> None:
        self._touch()
        self.pages.setCurrentIndex(PAGES.index(name))

    # --------------------------------------------------------------- events from the line

    @QtCore.Slot()
    def drain(self) -> None:
        """Fold everything waiting into the model and redraw what changed (Qt thread)."""
        events = self.buffer.take()
        if not events:
            return
        self.drains += 1
        changed: set[str] = set()
        newest_live: Part | None = None
        for event in events:
            parts = self.model.apply(event)
            if "live" in parts:
                if newest_live is not None:
                    self.display_skipped += 1
                newest_live = self.model.live
            changed |= parts
        self._redraw(changed, live=newest_live)

    def _redraw(self, changed: set[str], *, live: Part | None) -> None:
        model = self.model
        if live is not None:
            self.frame_view.show_part(live)
        if changed & {"verdict", "status"}:
            self.banner.show_part(model.last, state=model.state)
        if changed & {"counters", "verdict"}:
            self.counters.show_counters(model.counters, since_wall_s=model.shift_started_wall_s)
        if "trend" in changed:
            self.trend.show_trend(model.trend)
        if "gallery" in changed:
            self.gallery.show_parts(list(model.gallery))
        if "alarms" in changed:
            self.alarm_banner.show_alarms(model.banner_alarms)
        if "lights" in changed:
            self.lights.show_lights(model.lights())
        if changed & {"status", "stats", "verdict"}:
            self._show_stats()
        if "full_res" in changed and model.full_res is not None:
            self._show_full_resolution(model.full_res)
        if changed & {"messages", "status"} and model.messages:
            _, text, error = model.messages[-1]
            self.message_label.setText(text)
            self.message_label.setStyleSheet(f"color: {'#ff8080' if error else theme.MUTED};")

    def _show_full_resolution(self, part: Part) -> None:
        """Swap the inspected part's display image for the archived full-resolution one, same view."""
        shown = self.inspect_view.part
        if shown is None or shown.data.get("frame_id") != part.data.get("frame_id") or part.image is None:
            return
        old_w = self.inspect_view.shape[1] if self.inspect_view.shape else part.image.shape[1]
        (x0, x1), (y0, y1) = self.inspect_view.box.viewRange()
        factor = part.image.shape[1] / max(1, old_w)
        self.inspect_view.show_part(part)
        self.inspect_view.box.setRange(
            xRange=(x0 * factor, x1 * factor), yRange=(y0 * factor, y1 * factor), padding=0.0
        )
        h, w = part.image.shape[:2]
        self.inspect_resolution.setText(f"full resolution {w}x{h} px from the image archive")

    def dropped_display_frames(self) -> int:
        """Display images that never reached the screen: dropped by the line, the buffer or here."""
        return self.model.display_dropped + self.buffer.display_dropped + self.display_skipped

    def _show_stats(self) -> None:
        s, model = self.model.status, self.model

        def ms(key: str) -> str:
            value = s.get(key)
            return "\u2013" if value is None else f"{value:.0f} ms"

        last = model.last.data.get("latency_ms") if model.last else None
        fps = s.get("fps")
        dash, dot = "\u2013", " \u00b7 "
        self.stats.setText(
            f"latency p50 {ms('latency_ms_p50')}{dot}p99 {ms('latency_ms_p99')}"
            + ("" if last is None else f"{dot}last {last:.0f} ms")
            + f"{dot}rate {dash if fps is None else f'{fps:.1f} parts/s'}"
            + f"{dot}queue {s.get('queue_depth', dash)}/{s.get('queue_size', dash)}"
            + f"{dot}display frames dropped {self.dropped_display_frames()}"
        )
        state = model.state
        self.state_label.setText(state.upper())
        colour = {"running": theme.VERDICT_COLOURS["OK"], "paused": theme.VERDICT_COLOURS["UNINSPECTED"]}
        self.state_label.setStyleSheet(f"color: {colour.get(state, theme.VERDICT_COLOURS['NG'])};")
        threshold = model.threshold
        self.line_label.setText(
            f"bundle {s.get('bundle_id', '?')} \u00b7 threshold "
            f"{'?' if threshold is None else f'{threshold:.4g}'} \u00b7 {self.source.description}"
        )
        self.pause_button.setText("Resume line (Space)" if state == "paused" else "Pause line (Space)")
        if threshold is not None and not self.threshold_spin.hasFocus():
            self.threshold_spin.setValue(threshold)

    # --------------------------------------------------------------- inspection view

    def inspect(self, index: int) -> bool:
        """Open the gallery's part `index` (0: the newest NG) on the inspection screen."""
        parts = list(self.model.gallery)
        if not parts:
            self.model.note("no NG part to inspect yet")
            self._redraw({"messages"}, live=None)
            return False
        index = max(0, min(index, len(parts) - 1))
        self.inspect_index = index
        part = parts[index]
        self.inspect_view.show_part(part, fit=True)
        h, w = (part.image if part.image is not None else part.overlay).shape[:2]  # type: ignore[union-attr]
        self.inspect_resolution.setText(f"display image {w}x{h} px; loading full resolution")
        self.source.submit(Action("full_resolution", *self._who(), dict(part.data)))
        d = part.data
        when = d.get("wall_time_s")
        clock = time.strftime("%H:%M:%S", time.localtime(when)) if when else "?"
        self.inspect_title.setText(f"\u2716 NG \u00b7 part {part.title}")
        score, latency = d.get("score"), d.get("latency_ms")
        self.inspect_info.setText(
            f"frame {d.get('frame_id')} at {clock} \u00b7 score "
            f"{'?' if score is None else f'{score:.2f}'} (threshold 1.0 on the calibrated scale) "
            f"\u00b7 latency {'?' if latency is None else f'{latency:.0f}'} ms\n"
            f"bundle {d.get('bundle_id')}" + (f"\n{d['reason']}" if d.get("reason") else "")
        )
        defects = d.get("defects") or []
        self.defect_table.setRowCount(len(defects))
        if not defects:
            self.inspect_info.setText(
                self.inspect_info.text()
                + "\nno defect region above the pixel threshold: NG on the image score"
            )
        from appliance.gui.model import defect_label

        for row, defect in enumerate(defects):
            area = defect.get("area_mm2")
            cells = [
                str(row + 1),
                defect_label(defect),
                f"{area:.2f} mm\u00b2" if area else f"{defect.get('area_px', 0)} px",
                f"{defect.get('peak_score') or 0:.2f}",
            ]
            for col, text in enumerate(cells):
                self.defect_table.setItem(row, col, QtWidgets.QTableWidgetItem(text))
        self.prev_button.setEnabled(index > 0)
        self.next_button.setEnabled(index < len(parts) - 1)
        self.show_page("inspect")
        return True

    # --------------------------------------------------------------- roles and actions

    def _touch(self) -> None:
        self._last_touch = time.monotonic()

    def unlock(self, pin: str) -> bool:
        """Unlock the engineer role with `pin`; a wrong PIN is refused and noted."""
        if not self.settings.engineer_pin_hash:
            self.model.note("no engineer PIN is configured (gui.engineer_pin_hash)", error=True)
            ok = False
        else:
            ok = verify_pin(pin, self.settings.engineer_pin_hash)
            if not ok:
                self.model.note("wrong PIN", error=True)
        if ok:
            self.engineer = True
            self._engineer_since = time.monotonic()
            self._touch()
            self.model.note("engineer role unlocked")
        self._show_role()
        self._redraw({"messages"}, live=None)
        return ok

    def lock(self) -> None:
        if self.engineer:
            self.model.note("engineer role locked")
        self.engineer = False
        self._show_role()
        self._redraw({"messages"}, live=None)

    def _show_role(self) -> None:
        self.pin_pad.setVisible(not self.engineer)
        for widget in self._engineer_controls:
            widget.setEnabled(self.engineer)
        self.exit_button.setEnabled(self.engineer or not self.settings.kiosk)
        self.role_label.setText(
            "Engineer role: UNLOCKED" if self.engineer else "Engineer role: LOCKED \u2013 enter the PIN"
        )
        self.engineer_button.setText("Engineer: unlocked (E)" if self.engineer else "Engineer (E)")

    def _who(self) -> tuple[str, str]:
        return self.settings.station, "engineer" if self.engineer else "operator"

    def _engineer_action(self, name: str, value: Any = None) -> bool:
        """Send an engineer action to the line, or refuse it (and say so) while locked."""
        self._touch()
        if not self.engineer:
            self.model.note(f"{name}: refused, the engineer role is locked (enter the PIN)", error=True)
            self._redraw({"messages"}, live=None)
            return False
        user, role = self._who()
        if not self.source.submit(Action(name, user, role, value)):
            self.model.note(f"{name}: too many actions waiting; try again", error=True)
            self._redraw({"messages"}, live=None)
            return False
        self.model.note(f"{name}: sent")
        self._redraw({"messages"}, live=None)
        return True

    def request_threshold(self, value: float) -> bool:
        return self._engineer_action("threshold", float(value))

    def request_bundle(self, path: str) -> bool:
        if not path.strip():
            self.model.note("bundle: name a bundle directory", error=True)
            self._redraw({"messages"}, live=None)
            return False
        return self._engineer_action("bundle", path.strip())

    def toggle_pause(self) -> bool:
        paused = bool(self.model.status.get("paused"))
        return self._engineer_action("resume" if paused else "pause")

    def request_new_shift(self) -> bool:
        if not self.engineer:
            return self._engineer_action("new shift")
        self.model.new_shift()
        self.model.note("new shift: counters start from 0")
        self._redraw({"counters", "messages"}, live=None)
        return True

    def acknowledge_alarms(self) -> bool:
        """Acknowledge every alarm on the banner (any role); the line records who did."""
        self._touch()
        if not self.model.banner_alarms:
            return False
        user, role = self._who()
        sent = self.source.submit(Action("acknowledge", user, role, None))
        self.model.note("alarms acknowledged" if sent else "acknowledge: too many actions waiting")
        self._redraw({"messages"}, live=None)
        return sent

    def request_exit(self) -> None:
        if self.settings.kiosk and not self.engineer:
            self.model.note("kiosk mode: unlock the engineer role to close the station", error=True)
            self._redraw({"messages"}, live=None)
            return
        self._allow_close = True
        self.close()

    def _tick(self) -> None:
        if self.engineer and time.monotonic() - self._last_touch > self.settings.engineer_timeout_s:
            self.lock()
            self.show_page("main")

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 (Qt's name)
        """Any tap, click or key anywhere keeps the engineer role unlocked (idle timeout)."""
        if event.type() in (
            QtCore.QEvent.Type.MouseButtonPress,
            QtCore.QEvent.Type.TouchBegin,
            QtCore.QEvent.Type.KeyPress,
        ):
            self._touch()
        return False

    # --------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Stop the source's threads (the line itself is the caller's). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._timer.stop()
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)
        self.buffer.set_notify(None)
        self.source.stop()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        if not self._allow_close:
            event.ignore()
            return
        self.shutdown()
        super().closeEvent(event)
