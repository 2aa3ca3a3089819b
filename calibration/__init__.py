"""Commissioning a line: thresholds, flat-field, pixel scale, golden-template alignment, ROI masks,
capture checks."""
