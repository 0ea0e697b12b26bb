"""tasksearch: task-specific architecture search (KD-NAS, Trivedi et al.) -- a controller (REINFORCE or regularised
evolution) rewarded by proxy-distilled task accuracy and the device's latency table, under a hard budget; the best
architecture distilled on the whole task and exported. See docs/task-search.md.

Modules: controllers (policy, evolution, reward), budget (hard budget, feasibility), proxy (inherited weights, short
distillation, held-out accuracy), request (inputs and their checks), loop (resumable search), final (full
distillation and export), run (all of it).
"""
