"""NDP-Net: normal-reference attention and defective-feature perception (Luo, Yao, Yu, IEEE)."""
