"""profiling: see the module docstrings."""
