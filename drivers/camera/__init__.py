"""Cameras: the interface and Frame (`base`), GenICam, replay and the synthetic line."""
