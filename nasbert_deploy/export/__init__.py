"""export: see the module docstrings."""
