"""supernet: see the module docstrings."""
