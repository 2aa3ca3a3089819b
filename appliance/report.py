"""A self-contained HTML report of a line run: the summary, and the rejected frames with heatmaps.

`write_report` reads what the line left behind, not what it remembers: the
verdicts in the records database and the frames and heatmaps in the image
archive (the paths the records name). Images are downsized and embedded as
base64 JPEG, so the report is one file that can be mailed or archived. It is
written to a temporary file beside the target and moved into place.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.records import RecordsReader, VerdictRecord

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ccc; padding: 0.4em; font-size: 0.85em; width: max-content; }
.card img { display: inline-block; margin-right: 0.2em; image-rendering: auto; }
.NG { color: #b00; font-weight: bold; } .UNINSPECTED { color: #a60; font-weight: bold; }
.OK { color: #070; } .miss { background: #fee; } .note { color: #666; font-size: 0.9em; }
"""


def thumbnail_b64(path: Path | str | None, *, max_px: int) -> str | None:
    """An image file downsized to `max_px` on its longest side, as base64 JPEG; None if unreadable."""
    if not path:
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    height, width = image.shape[:2]
    scale = max_px / max(height, width)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(str(k))}: {_cell(v)}" for k, v in value.items()) or "-"
    return html.escape("-" if value is None else str(value))


def _summary_table(summary: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in summary.items())
    return f"<table>{rows}</table>"


def _confusion(rows: list[VerdictRecord], truth: Callable[[int], str | None]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        label = "defective" if truth(row.frame_id) else "good"
        counts[(row.verdict, label)] = counts.get((row.verdict, label), 0) + 1
    body = "".join(
        f"<tr><th class='{v}'>{v}</th>"
        + "".join(f"<td>{counts.get((v, label), 0)}</td>" for label in ("good", "defective"))
        + "</tr>"
        for v in ("OK", "NG", "UNINSPECTED")
    )
    return f"<table><tr><th>verdict \\ truth</th><th>good</th><th>defective</th></tr>{body}</table>"


def _card(row: VerdictRecord, truth: Callable[[int], str | None] | None, *, thumb_px: int) -> str:
    images = []
    for path, what in ((row.image_path, "frame"), (row.heatmap_path, "heatmap")):
        data = thumbnail_b64(path, max_px=thumb_px)
        if data is not None:
            images.append(f"<img alt='{what} {row.frame_id}' src='data:image/jpeg;base64,{data}'>")
    if not images:
        images.append("<span class='note'>(no archived image)</span>")
    label = ""
    miss = ""
    if truth is not None:
        defect = truth(row.frame_id)
        label = f"<br>truth: {html.escape(defect) if defect else 'good'}"
        if defect is None and row.verdict != "OK":
            miss = " miss"
    score = "-" if row.score is None else f"{row.score:.3f}"
    reason = f"<br>{html.escape(row.reason)}" if row.reason else ""
    defects = f", {len(row.defects)} defect region(s)" if row.defects else ""
    return (
        f"<div class='card{miss}'>{''.join(images)}<br>"
        f"frame {row.frame_id} ({html.escape(row.part_id)}): <span class='{row.verdict}'>{row.verdict}</span>"
        f" score {score}{defects}{reason}{label}</div>"
    )


def write_report(
    path: Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    records_path: Path,
    truth: Callable[[int], str | None] | None = None,
    max_images: int = 120,
    thumb_px: int = 160,
) -> Path:
    """Write the HTML report of the run recorded in `records_path`; returns `path`.

    `truth(frame_id)` names a frame's true defect (None: good) when the source
    knows it; the report then adds a confusion table and marks false rejects.
    At most `max_images` rejected frames are shown (NG first, then UNINSPECTED).
    """
    reader = RecordsReader(records_path)
    rows = sorted(reader.iter_verdicts(), key=lambda r: r.frame_id)
    rejects = [r for r in rows if r.verdict == "NG"] + [r for r in rows if r.verdict == "UNINSPECTED"]
    shown = rejects[:max_images]
    alarms = reader.alarms(limit=50)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>written {dt.datetime.now().astimezone().isoformat(timespec='seconds')} "
        f"from {html.escape(str(records_path))}</p>",
        "<h2>Summary</h2>",
        _summary_table(summary),
    ]
    if truth is not None:
        parts += ["<h2>Verdicts against ground truth</h2>", _confusion(rows, truth)]
    if alarms:
        alarm_rows = "".join(
            f"<tr><td>{html.escape(a.source)}</td><td>{html.escape(a.severity)}</td>"
            f"<td>{html.escape(a.message)}</td></tr>"
            for a in alarms
        )
        parts += [
            "<h2>Alarms</h2>",
            f"<table><tr><th>source</th><th>severity</th><th>message</th></tr>{alarm_rows}",
        ]
        parts.append("</table>")
    parts.append(f"<h2>Rejected frames ({len(rejects)}; {len(shown)} shown)</h2>")
    parts.append("<p class='note'>frame, then the anomaly map over it (blue: normal, red: anomalous).</p>")
    parts.append("<div class='grid'>" + "".join(_card(r, truth, thumb_px=thumb_px) for r in shown) + "</div>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("\n".join(parts), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
