"""student: see the module docstrings."""
