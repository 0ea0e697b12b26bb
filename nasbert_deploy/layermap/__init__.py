"""layermap: which teacher layer supervises each student block during distillation, found by a genetic search
(Jiao et al. 2020, "Improving Task-Agnostic BERT Distillation with Layer Mapping Search"). See docs/training.md.

Modules: maps (the heuristic and random maps, the `--layer-map` file/inline form), ga (the genetic algorithm over
maps, independent of how a map is scored), proxy (a map's fitness: a short distillation from fixed start weights,
then frozen-embedding probes and retrieval), request (inputs and their checks), run (the resumable, cached search).
"""
