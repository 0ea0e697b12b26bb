"""model: see the module docstrings."""
