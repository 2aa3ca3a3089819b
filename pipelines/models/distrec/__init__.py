"""DistRec: distillation and reconstruction (Luo and Zhang, Sensors 2023) with patch-similarity scoring."""
