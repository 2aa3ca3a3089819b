"""BVPN: biomimetic visual perception network (focus, peripheral and logical modules)."""
