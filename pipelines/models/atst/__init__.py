"""ATST: asymmetric teacher-student network (CoT student, EMA-normalised teacher, multi-scale maps)."""
