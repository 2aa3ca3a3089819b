"""IKDFF: reverse knowledge distillation with attention feature fusion and a feature-mask generator."""
