"""Placeholder quickstart: writes a small synthetic run and validates it (replaced by the emoji benchmark)."""
