"""Inference and training pipelines: tiling, models, backends, bundles, decision, metrics."""
