"""The controllers of the task-specific search (KD-NAS, Trivedi et al.): REINFORCE over per-decision categorical
choices, and regularised evolution (Real et al. 2019) as the alternative, behind one interface.

An architecture is a list of decisions (`ArchCoder`): per block one hidden size, per layer one operation of the
space (identity included). Identities stand only at a block's end, so a layer's op is a free decision only while
every earlier layer of its block is a real operation (the first layer may not be identity); the rest are forced
to identity and take no part in the policy's probability.

Both controllers sample only architectures within the hard budget: `fits(arch)` is asked for every proposal,
an over-budget one is resampled (at most `max_tries` times, then the feasibility witness `fallback` -- the fastest
arch within the budget -- is proposed). Over-budget samples are never rewarded: REINFORCE takes them as reward 0
(pushing the policy away from them; they cost no proxy evaluation), evolution discards them.

State is plain JSON (`state()` / `load_state()`, the random generator's state included), so a search resumes
exactly where it stopped. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from nasbert_deploy.space import IDENTITY, Arch, BlockArch, SearchSpace

Fits = Callable[[Arch], bool]
ADV_CLIP = 2.0  # REINFORCE advantages, in moving standard deviations of the reward
REJECT_WEIGHT = 0.1  # share of a step an over-budget (rejected, reward 0) sample gets


class ArchCoder:
    """Architecture <-> decisions: per block `[hidden index, op index of layer 1, ..., op index of layer L]`,
    op indices into `space.all_ops` (identity last)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.hiddens = tuple(space.hidden_sizes)
        self.ops = tuple(space.all_ops)
        self.id_index = self.ops.index(IDENTITY)
        self.blocks, self.layers = space.num_blocks, space.layers_per_block

    def decode(self, choices: np.ndarray) -> Arch:
        """(blocks, 1 + layers) int array -> Arch (ops after a block's first identity are identity)."""
        blocks = []
        for row in choices:
            ops, seen_id = [], False
            for j, o in enumerate(row[1:]):
                op = self.ops[int(o)]
                seen_id = seen_id or (op.is_identity and j > 0)
                ops.append(IDENTITY if seen_id else op)
            blocks.append(BlockArch(self.hiddens[int(row[0])], tuple(ops)))
        return self.space.validate(Arch(tuple(blocks)))

    def encode(self, arch: Arch) -> np.ndarray:
        return np.array([[self.hiddens.index(b.hidden), *(self.ops.index(op) for op in b.ops)] for b in arch.blocks])

    def free(self, choices: np.ndarray) -> np.ndarray:
        """(blocks, layers) bool: which op decisions were free (not forced to identity by an earlier identity)."""
        out = np.zeros((self.blocks, self.layers), dtype=bool)
        for i, row in enumerate(choices):
            for j in range(self.layers):
                out[i, j] = j == 0 or not np.any(row[1 : j + 1] == self.id_index)
        return out


class Controller(Protocol):
    """What the search loop needs from a controller."""

    name: str

    def propose(self) -> Arch:
        """The next architecture to evaluate (within the budget)."""
        ...

    def observe(self, arch: Arch, reward: float) -> None:
        """The reward of a proposed architecture."""
        ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


class Reinforce:
    """REINFORCE with a moving-average baseline (Williams 1992; the KD-NAS / ENAS controller, here with independent
    logits per decision instead of an RNN -- the space's decisions are few and nearly independent).

    Update after each reward R: logits += lr * A * d log pi(arch) / d logits with the advantage A = (R - b) / s
    clipped to +-2, where b is the exponential moving average of the rewards (decay `baseline_decay`) and s their
    moving standard deviation (floored at 0.02), so `lr` is in units of a standard deviation of the rewards.
    Rejected (over-budget) samples get R = 0 with a tenth of the step (`REJECT_WEIGHT`): a budget that rejects most
    samples would otherwise swamp the accuracy signal and collapse the policy onto the fallback.
    """

    name = "reinforce"

    def __init__(self, space: SearchSpace, fits: Fits, fallback: Arch, seed: int = 0, lr: float = 0.3,
                 baseline_decay: float = 0.8, max_tries: int = 200) -> None:
        self.coder, self.fits, self.fallback = ArchCoder(space), fits, fallback
        self.lr, self.decay, self.max_tries = lr, baseline_decay, max_tries
        c = self.coder
        self.hidden_logits = np.zeros((c.blocks, len(c.hiddens)))
        self.op_logits = np.zeros((c.blocks, c.layers, len(c.ops)))
        self.baseline: float | None = None
        self.var = 0.0
        self.rng = np.random.default_rng(seed)
        self.rejected = 0
        self.fallbacks = 0

    # ---------------------------------------------------------------- policy
    def _op_probs(self) -> np.ndarray:
        logits = self.op_logits.copy()
        logits[:, 0, self.coder.id_index] = -np.inf  # a block's first layer is a real operation
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def _hidden_probs(self) -> np.ndarray:
        e = np.exp(self.hidden_logits - self.hidden_logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """(hidden probs (blocks, |H|), op probs (blocks, layers, |ops|))."""
        return self._hidden_probs(), self._op_probs()

    def _sample(self) -> np.ndarray:
        hp, op = self.probabilities()
        c = self.coder
        out = np.zeros((c.blocks, 1 + c.layers), dtype=np.int64)
        for i in range(c.blocks):
            out[i, 0] = self.rng.choice(len(c.hiddens), p=hp[i])
            for j in range(c.layers):
                out[i, 1 + j] = self.rng.choice(len(c.ops), p=op[i, j])
        return out

    def log_prob(self, arch: Arch) -> float:
        """log pi(arch) over its free decisions."""
        ch = self.coder.encode(arch)
        hp, op = self.probabilities()
        free = self.coder.free(ch)
        lp = sum(np.log(hp[i, ch[i, 0]]) for i in range(len(ch)))
        lp += sum(np.log(op[i, j, ch[i, 1 + j]]) for i in range(len(ch)) for j in range(free.shape[1]) if free[i, j])
        return float(lp)

    def _update(self, choices: np.ndarray, advantage: float) -> None:
        hp, op = self.probabilities()
        free = self.coder.free(choices)
        step = self.lr * advantage
        for i in range(len(choices)):
            g = -hp[i]
            g[choices[i, 0]] += 1.0
            self.hidden_logits[i] += step * g
            for j in range(free.shape[1]):
                if free[i, j]:
                    g = -op[i, j]
                    g[choices[i, 1 + j]] += 1.0
                    self.op_logits[i, j] += step * np.nan_to_num(g)

    def _advantage(self, reward: float) -> float:
        if self.baseline is None:
            return 0.0
        adv = (reward - self.baseline) / max(float(np.sqrt(self.var)), 0.02)
        return float(np.clip(adv, -ADV_CLIP, ADV_CLIP))

    # ---------------------------------------------------------------- interface
    def propose(self) -> Arch:
        for _ in range(self.max_tries):
            ch = self._sample()
            arch = self.coder.decode(ch)
            if self.fits(arch):
                return arch
            self.rejected += 1
            self._update(ch, REJECT_WEIGHT * self._advantage(0.0))  # over budget: never rewarded
        self.fallbacks += 1
        return self.fallback

    def observe(self, arch: Arch, reward: float) -> None:
        self._update(self.coder.encode(arch), self._advantage(reward))
        if self.baseline is None:
            self.baseline = reward
        else:
            d = reward - self.baseline
            self.baseline += (1 - self.decay) * d
            self.var = self.decay * (self.var + (1 - self.decay) * d * d)

    def state(self) -> dict[str, Any]:
        return {"controller": self.name, "hidden_logits": self.hidden_logits.tolist(), "op_logits": self.op_logits.tolist(),
                "baseline": self.baseline, "var": self.var, "rng": _rng_state(self.rng), "rejected": self.rejected,
                "fallbacks": self.fallbacks}

    def load_state(self, state: dict[str, Any]) -> None:
        self.hidden_logits = np.array(state["hidden_logits"], dtype=float)
        self.op_logits = np.array(state["op_logits"], dtype=float)
        self.baseline, self.var = state["baseline"], float(state["var"])
        self.rng.bit_generator.state = state["rng"]
        self.rejected, self.fallbacks = int(state["rejected"]), int(state["fallbacks"])


class Evolution:
    """Regularised (aging) evolution: `population` uniformly random archs within the budget, then each proposal
    mutates one decision of the best of `sample` random members; the oldest member dies when a child joins."""

    name = "evolution"

    def __init__(self, space: SearchSpace, fits: Fits, fallback: Arch, seed: int = 0, population: int = 8,
                 sample: int = 3, max_tries: int = 200) -> None:
        self.coder, self.fits, self.fallback = ArchCoder(space), fits, fallback
        self.size, self.sample, self.max_tries = population, sample, max_tries
        self.members: list[tuple[str, float]] = []  # oldest first
        self.rng = np.random.default_rng(seed)
        self.rejected = 0
        self.fallbacks = 0

    def _random(self) -> np.ndarray:
        c = self.coder
        ch = np.zeros((c.blocks, 1 + c.layers), dtype=np.int64)
        for i in range(c.blocks):
            ch[i, 0] = self.rng.integers(len(c.hiddens))
            depth = int(self.rng.integers(1, c.layers + 1))  # as `SearchSpace.random_block`: depth first
            for j in range(c.layers):
                ch[i, 1 + j] = self.rng.integers(len(c.ops) - 1) if j < depth else c.id_index
        return ch

    def _mutate(self, ch: np.ndarray) -> np.ndarray:
        c, out = self.coder, ch.copy()
        i = int(self.rng.integers(c.blocks))
        pos = int(self.rng.integers(1 + c.layers))
        if pos == 0:
            out[i, 0] = (out[i, 0] + 1 + self.rng.integers(len(c.hiddens) - 1)) % len(c.hiddens) if len(c.hiddens) > 1 else 0
        else:
            n = len(c.ops) - (pos == 1)  # the first layer may not become identity
            out[i, pos] = (out[i, pos] + 1 + self.rng.integers(max(n - 1, 1))) % n
            # identities only at the end: turning a layer into one ends the block there; a real op after
            # identities makes the layers before it real (copied from the op)
            if out[i, pos] == c.id_index:
                out[i, pos:] = c.id_index
            else:
                for j in range(1, pos):
                    if out[i, j] == c.id_index:
                        out[i, j] = out[i, pos]
        return out

    def propose(self) -> Arch:
        for _ in range(self.max_tries):
            if len(self.members) < self.size:
                ch = self._random()
            else:
                pick = self.rng.choice(len(self.members), size=min(self.sample, len(self.members)), replace=False)
                parent = max((self.members[int(k)] for k in pick), key=lambda m: m[1])
                ch = self._mutate(self.coder.encode(self.coder.space.parse(parent[0])))
            arch = self.coder.decode(ch)
            if self.fits(arch):
                return arch
            self.rejected += 1
        self.fallbacks += 1
        return self.fallback

    def observe(self, arch: Arch, reward: float) -> None:
        self.members.append((str(arch), float(reward)))
        if len(self.members) > self.size:
            self.members.pop(0)

    def state(self) -> dict[str, Any]:
        return {"controller": self.name, "members": [list(m) for m in self.members], "rng": _rng_state(self.rng),
                "rejected": self.rejected, "fallbacks": self.fallbacks}

    def load_state(self, state: dict[str, Any]) -> None:
        self.members = [(str(a), float(r)) for a, r in state["members"]]
        self.rng.bit_generator.state = state["rng"]
        self.rejected, self.fallbacks = int(state["rejected"]), int(state["fallbacks"])


CONTROLLERS = {"reinforce": Reinforce, "evolution": Evolution}


def make_controller(name: str, space: SearchSpace, fits: Fits, fallback: Arch, seed: int = 0) -> Controller:
    """A controller by name (`CONTROLLERS`)."""
    if name not in CONTROLLERS:
        raise ValueError(f"unknown controller {name!r}; valid: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](space, fits, fallback, seed)  # type: ignore[no-any-return]


def reward(accuracy: float, latency_ms: float, target_ms: float, weight: float = -0.07) -> float:
    """KD-NAS / MnasNet reward: accuracy * (latency / target) ** weight for an arch within the budget, else 0.

    `weight` < 0 favours faster models: with -0.07, halving the latency is worth about 5% more reward.
    """
    if latency_ms > target_ms:
        return 0.0
    return float(accuracy * (latency_ms / target_ms) ** weight)
