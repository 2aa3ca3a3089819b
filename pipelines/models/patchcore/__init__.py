"""PatchCore (Roth et al., CVPR 2022) on the EfficientNet-Lite backbone: the baseline."""
