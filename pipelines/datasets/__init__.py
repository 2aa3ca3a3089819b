"""Datasets: synthetic products written in the MVTec layout or as line recordings."""
