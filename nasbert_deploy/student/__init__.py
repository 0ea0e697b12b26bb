"""student: see the module docstrings.

`INITS`: how a student's (or an exported model's) weights start: inherited from the supernet, or
random (latency studies, baselines). Kept here, light, so the command line builds its `--init`
choice from it without importing torch.
"""

INITS: tuple[str, ...] = ("supernet", "random")
