"""The output registry: explicit names, lazy imports, clear errors for missing packages."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest

from drivers.errors import OutputError
from drivers.io.base import Output
from drivers.io.registry import OUTPUTS, create_output, output_class, settings_class


def test_every_registered_output_resolves() -> None:
    for type_name, (module_name, class_name) in OUTPUTS.items():
        cls = output_class(type_name)
        assert cls.__name__ == class_name and cls.__module__ == module_name
        assert issubclass(cls, Output) and cls.type_name == type_name
        fields = settings_class(type_name).model_fields
        assert fields["type"].default == type_name
        # Every setting says what it is, with its unit where it has one.
        for name, field in fields.items():
            assert field.description, f"{type_name}.{name} has no description"
            if name.endswith(("_ms", "_s")):
                assert "second" in field.description, f"{type_name}.{name} does not name its unit"


def test_unknown_type_lists_the_choices() -> None:
    with pytest.raises(OutputError, match="allowed: gpio, log, modbus, opcua, s7"):
        create_output({"type": "profinet"})


def test_mapping_is_validated_with_the_key_path() -> None:
    with pytest.raises(OutputError, match=r"output\.pulse_ms") as info:
        create_output({"type": "modbus", "pulse_ms": -1})
    assert "-1" in str(info.value)
    with pytest.raises(OutputError, match=r"output\.colour"):
        create_output({"type": "log", "colour": "red"})


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"type": "log"}, "LogOutput"),
        ({"type": "modbus", "port": 5020}, "ModbusOutput"),
        ({"type": "s7", "port": 10102}, "S7Output"),
        ({"type": "opcua"}, "OpcUaOutput"),
    ],
)
def test_create_from_mapping(config: dict[str, Any], expected: str) -> None:
    out = create_output(config)
    try:
        assert type(out).__name__ == expected
        assert not out.status().connected
    finally:
        out.close()


@pytest.mark.parametrize(
    ("type_name", "module", "package"),
    [("modbus", "pymodbus", "pymodbus"), ("s7", "snap7", "python-snap7"), ("opcua", "asyncua", "asyncua")],
)
def test_missing_plc_package_breaks_only_that_choice(
    monkeypatch: pytest.MonkeyPatch, type_name: str, module: str, package: str
) -> None:
    # A None entry in sys.modules makes `import module` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(OutputError) as info:
        create_output({"type": type_name})
    message = str(info.value)
    assert f"'{package}'" in message and "pip install '.[plc]'" in message
    log_output = create_output({"type": "log"})  # the other choices still work
    log_output.close()


def test_output_modules_import_without_their_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("pymodbus", "snap7", "asyncua", "gpiod"):
        monkeypatch.setitem(sys.modules, module, None)
    for type_name, (module_name, _) in OUTPUTS.items():
        monkeypatch.delitem(sys.modules, module_name, raising=False)
        importlib.import_module(module_name)
        assert settings_class(type_name)


def test_gpio_without_gpiod_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(OutputError, match=r"'gpiod'.*pip install '\.\[gpio\]'"):
        create_output({"type": "gpio", "line": 4})
