"""prune: structured pruning of attention heads and FFN neurons with learned L0 gates, aimed at a device latency budget.

- `gates`: hard-concrete gates on a BERT classifier (heads via `head_mask`, neurons via a hook);
- `latency`: the per-device pruning latency table (attention with k of H heads, FFN with w of W neurons);
- `apply`: closed gates -> a smaller model with real smaller matrices (`model.pruned_bert`);
- `calibration`: the table scaled to this machine before the gates train, and re-selection after timing;
- `run`: the whole `prune` command (gate training with a Lagrangian latency target, pruning, fine-tuning,
  export, validation, measurement, report).
"""
