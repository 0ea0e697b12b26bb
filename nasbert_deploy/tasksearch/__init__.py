"""tasksearch: task-specific architecture search (KD-NAS, Trivedi et al.) -- a controller (REINFORCE or regularised
evolution) rewarded by proxy-distilled task accuracy and the device's latency table, under a hard budget; the best
architecture distilled on the whole task and exported. See docs/task-search.md.

Modules: controllers (policy, evolution, reward), budget (hard budget, feasibility), start (where each student's
weights start: the supernet, or extracted from a pre-trained encoder), proxy (short distillation, held-out
accuracy), retrieval (the proxy and final distillation of a query/document pair task: held-out MRR), request
(inputs and their checks), loop (resumable search), final (full distillation and export), run (all of it).
"""

# where every student of a search starts (`--init`; `tasksearch.start`); torch-free, so the CLI can offer the choice
START_INITS: tuple[str, ...] = ("supernet", "etd-impt", "etd-rand")
DEFAULT_ETD_SPACE = "minilm-wide"  # the MiniLM-L6 teacher's own geometry: extraction copies it unchanged
