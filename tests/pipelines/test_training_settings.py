"""`aoi train --set KEY=VALUE`: values take the type of the profile's default; a bad one is one line."""

from __future__ import annotations

import pytest

from pipelines.errors import ModelError
from pipelines.training import coerce_setting


def test_values_take_the_defaults_type() -> None:
    assert coerce_setting("iterations", "300", 1200) == 300
    assert coerce_setting("lr", "5e-4", 1e-3) == pytest.approx(5e-4)
    assert coerce_setting("backbone", "efficientnet-lite1", "efficientnet-lite0") == "efficientnet-lite1"
    for text, value in (("false", False), ("off", False), ("0", False), ("True", True), ("on", True)):
        assert coerce_setting("flag", text, True) is value
    assert coerce_setting("modules", ["focus"], ["auto"]) == ["focus"]
    assert coerce_setting("anything", 3, 1.0) == 3  # non-text values (from Python) pass as they are
    # lists: comma-separated, each item in the type of the default's items
    assert coerce_setting("taps", "3, 4", [4, 10]) == [3, 4]
    assert coerce_setting("modules", "focus,peripheral", ["auto"]) == ["focus", "peripheral"]


@pytest.mark.parametrize(
    ("key", "text", "default", "message"),
    [
        ("flag", "maybe", True, "expected true or false"),
        ("lr", "abc", 1e-3, "expected a number"),
        ("iterations", "1.5", 1200, "expected a whole number"),
        ("taps", "3,x", [4, 10], "expected a whole number"),
    ],
)
def test_bad_values_name_the_setting(key: str, text: str, default: object, message: str) -> None:
    with pytest.raises(ModelError, match=f"setting {key}=.*{message}"):
        coerce_setting(key, text, default)
