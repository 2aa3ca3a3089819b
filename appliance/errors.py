"""Errors of the appliance layer (configuration, CLI usage, records)."""

from __future__ import annotations

from drivers.errors import ApplianceError


class ConfigError(ApplianceError):
    """A configuration file or a command-line value is wrong."""


class RecordsError(ApplianceError):
    """The records database or image archive cannot be used."""
