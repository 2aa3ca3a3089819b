"""ROI masks: known polygons give the expected pixels, exclusions cut holes, masks are cached and
read-only, bad polygons are refused with the key, and the drawing shows them."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from calibration.errors import CalibrationError
from calibration.roi import RoiSettings, draw_roi, roi_mask


def test_no_polygons_inspect_the_whole_frame() -> None:
    mask = roi_mask((40, 60, 3), RoiSettings())
    assert mask.shape == (40, 60) and mask.dtype == bool and mask.all()


def test_a_rectangle_includes_its_pixels_and_an_exclusion_cuts_a_hole() -> None:
    settings = RoiSettings(
        include=[[(10, 20), (50, 20), (50, 60), (10, 60)]],
        exclude=[[(20, 30), (29, 30), (29, 39), (20, 39)]],
    )
    mask = roi_mask((100, 120), settings)
    expected = np.zeros((100, 120), bool)
    expected[20:61, 10:51] = True  # the corner points' pixels are inside
    expected[30:40, 20:30] = False
    np.testing.assert_array_equal(mask, expected)


def test_a_triangle_matches_point_in_polygon_away_from_its_edges() -> None:
    tri = [(5.0, 5.0), (95.0, 20.0), (30.0, 90.0)]
    mask = roi_mask((100, 100), RoiSettings(include=[tri]))
    yy, xx = np.mgrid[0:100, 0:100]
    # Signed distance to the triangle for each pixel centre, by half-planes.
    pts = np.asarray(tri)
    inside = np.ones((100, 100), bool)
    margin = np.full((100, 100), np.inf)
    for i in range(3):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
        nx, ny = y1 - y0, x0 - x1  # outward normal for this (clockwise on screen) order
        d = ((xx - x0) * nx + (yy - y0) * ny) / np.hypot(nx, ny)
        inside &= d <= 0
        margin = np.minimum(margin, np.abs(d))
    clear = margin > 1.0  # pixels more than a pixel from any edge
    np.testing.assert_array_equal(mask[clear], inside[clear])
    assert abs(int(mask.sum()) - int(inside.sum())) < 0.05 * inside.sum()


def test_masks_are_cached_and_read_only() -> None:
    settings = RoiSettings(include=[[(0, 0), (10, 0), (10, 10)]])
    a = roi_mask((20, 20), settings)
    assert roi_mask((20, 20, 3), settings) is a
    assert roi_mask((30, 20), settings) is not a
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = False
    # A changed polygon is a different mask, not a stale cache hit.
    settings.include = [[(0, 0), (19, 0), (19, 19), (0, 19)]]
    assert roi_mask((20, 20), settings).all()


def test_nothing_left_to_inspect_is_an_error() -> None:
    outside = RoiSettings(include=[[(500, 500), (600, 500), (600, 600)]])
    with pytest.raises(CalibrationError, match="leaves nothing of the 50x40 px frame"):
        roi_mask((40, 50), outside)


def test_bad_polygons_name_the_key() -> None:
    with pytest.raises(ValidationError, match=r"roi.include\[0\] has 2 points"):
        RoiSettings(include=[[(0, 0), (1, 1)]])
    with pytest.raises(ValidationError, match=r"roi.exclude\[1\] encloses no area"):
        RoiSettings(exclude=[[(0, 0), (5, 0), (5, 5)], [(0, 0), (1, 1), (2, 2)]])
    with pytest.raises(ValidationError, match="extra"):
        RoiSettings(polygons=[])  # type: ignore[call-arg]


def test_draw_roi_dims_the_outside_and_outlines_the_polygons() -> None:
    frame = np.full((200, 300), 200, np.uint16) * 100
    settings = RoiSettings(include=[[(50, 50), (250, 50), (250, 150), (50, 150)]])
    picture = draw_roi(frame, settings)
    assert picture.shape == (200, 300, 3) and picture.dtype == np.uint8
    assert picture[100, 150].tolist() == [255, 255, 255]  # inside: as it was (stretched 16-bit)
    assert picture[190, 10].max() < 100  # outside: dimmed
    edge = picture[100, 47:54].astype(int)  # across the left edge of the include polygon
    assert any(g > 150 and g > r + 60 and g > b + 60 for r, g, b in edge)  # outlined in green
