"""The explicit registry of line outputs: a `type:` name -> where its class lives.

Modules are imported only when their type is chosen, and the protocol
libraries (pymodbus, python-snap7, asyncua, gpiod) only when an output is
built, so a missing optional package breaks that choice alone, with an
`OutputError` that names the package and the pip extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from drivers.errors import OutputError
from drivers.io.base import Output, OutputSettings

#: type name -> (module path, output class name). Each class names its settings class.
OUTPUTS: dict[str, tuple[str, str]] = {
    "modbus": ("drivers.io.modbus", "ModbusOutput"),
    "s7": ("drivers.io.s7", "S7Output"),
    "opcua": ("drivers.io.opcua", "OpcUaOutput"),
    "gpio": ("drivers.io.gpio", "GpioOutput"),
    "log": ("drivers.io.log", "LogOutput"),
}


def output_class(type_name: str) -> type[Output]:
    """The output class registered under `type_name` (its module is imported now)."""
    try:
        module_name, class_name = OUTPUTS[type_name]
    except KeyError:
        raise OutputError(
            f"output.type={type_name!r} is not known; allowed: {', '.join(sorted(OUTPUTS))}"
        ) from None
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Output)):
        raise TypeError(f"{module_name}.{class_name} is not an Output")
    return cls


def settings_class(type_name: str) -> type[OutputSettings]:
    """The settings class of the output registered under `type_name`."""
    return output_class(type_name).settings_class


def create_output(settings: OutputSettings | Mapping[str, Any]) -> Output:
    """Build the output that `settings` selects with its `type` field.

    `settings` is a validated settings object, or a plain mapping (from YAML)
    that is validated here. Raises `OutputError` for an unknown type, invalid
    values, or a missing optional package (naming the package and the pip extra).
    """
    if isinstance(settings, Mapping):
        type_name = str(settings.get("type", ""))
        cls = output_class(type_name)
        try:
            validated = cls.settings_class.model_validate(dict(settings))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "output"
            raise OutputError(
                f"output.{where}: {first['msg']} (value {first.get('input')!r}); see drivers/io/README.md"
            ) from exc
    else:
        type_name = str(getattr(settings, "type", ""))
        cls = output_class(type_name)
        validated = settings
    output = cls(validated)
    # The library check runs now, not at the first connect, so a missing package fails at start-up.
    output.check()
    return output
