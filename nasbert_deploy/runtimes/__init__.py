"""runtimes: see the module docstrings."""
