"""Errors of the pipelines layer: data, bundles, models and inference."""

from __future__ import annotations

from drivers.errors import ApplianceError


class PipelineError(ApplianceError):
    """Base of the pipeline errors."""


class DataError(PipelineError):
    """A dataset folder or an image is missing, empty or unreadable."""


class BundleError(PipelineError):
    """A model bundle is missing, corrupt, foreign or incompatible."""


class ModelError(PipelineError):
    """A model family, backbone or its weights cannot be built."""
