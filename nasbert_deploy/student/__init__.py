"""student: see the module docstrings.

`INITS`: how a student's (or an exported model's) weights start: inherited from the supernet, or
random (latency studies, baselines). Kept here, light, so the command line builds its `--init`
choice from it without importing torch. `STUDENT_INITS` adds the teacher-extracted starts `distill` offers.
"""

INITS: tuple[str, ...] = ("supernet", "random")
# a distilled student may also start from the teacher itself (Extract Then Distill; `student.extraction`)
STUDENT_INITS: tuple[str, ...] = (*INITS, "etd-impt", "etd-rand")
