"""The declared benchmark matrix: shared axes and profiles (axes), the Variant record (variant), @matrix (declare)."""
