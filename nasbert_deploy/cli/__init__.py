"""cli: see the module docstrings."""
