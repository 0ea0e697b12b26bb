"""The mixed distillation corpus every benchmark and the shipped supernet use, as one reproducible file.

Paragraphs (one per line, at least 4 words) of the four prose files in `../shared/corpus/` (Debian package
descriptions, WordNet glosses, Python documentation, man pages; provenance and licences in that folder's README),
shuffled with a fixed seed; the first N are written (temp file, then rename). The Debian and WordNet files there
exclude every text of the tasks' held-out splits.

    python benchmarks/make_corpus.py --paragraphs 24128 --out runs/corpus24k.txt     # the default supernet's
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

CORPUS_FILES = ("debian-descriptions.txt", "wordnet-glosses.txt", "pydoc-train.txt", "manpages.txt")
SHARED = Path(__file__).resolve().parents[2] / "shared"


def corpus(shared: Path, n: int, seed: int = 0) -> list[str]:
    """The first `n` of the shuffled paragraphs (the same prefix for any larger `n`)."""
    lines: list[str] = []
    for f in CORPUS_FILES:
        lines += [ln.strip() for ln in (shared / "corpus" / f).read_text().splitlines() if len(ln.split()) >= 4]
    random.Random(seed).shuffle(lines)
    return lines[:n]


def write_corpus(shared: Path, path: Path, n: int, seed: int = 0) -> Path:
    """`corpus(shared, n, seed)` written once to `path` (kept if it is already there)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(corpus(shared, n, seed)) + "\n")
        tmp.replace(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED, help="the folder holding corpus/")
    ap.add_argument("--paragraphs", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    missing = [f for f in CORPUS_FILES if not (args.shared / "corpus" / f).is_file()]
    if missing or args.paragraphs < 1:
        what = f"{args.shared}/corpus lacks {', '.join(missing)}" if missing else f"--paragraphs {args.paragraphs} < 1"
        print(f"error: {what}; give --shared the folder with corpus/{CORPUS_FILES[0]} etc. and a positive count",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    if args.out.exists():
        print(f"error: {args.out} exists; remove it or choose another --out", file=sys.stderr)
        sys.exit(2)
    write_corpus(args.shared, args.out, args.paragraphs, args.seed)
    print(f"{args.paragraphs} paragraphs (seed {args.seed}) written to {args.out}")


if __name__ == "__main__":
    main()
