"""Inference backends: the interface (`base`), torch, and the explicit registry."""
