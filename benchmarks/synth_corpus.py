"""Write an MS MARCO-like collection.tsv of any size, deterministically.

    python benchmarks/synth_corpus.py --rows 8841823 --out /tmp/synth.tsv
    python benchmarks/synth_corpus.py --fit ../shared/data/msmarco-mini/collection.tsv   # refresh profile

Passage lengths (in words) are drawn from the length histogram of the real MS MARCO mini collection,
words from its 5,000 most frequent words with their frequencies. Both live in
benchmarks/msmarco_profile.json (statistics only, no passage text), so the GPU machine, which has no
copy of the data, writes the same corpus from the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

PROFILE = Path(__file__).with_name("msmarco_profile.json")


def fit(collection: Path) -> dict[str, object]:
    lengths: Counter[int] = Counter()
    words: Counter[str] = Counter()
    with open(collection, encoding="utf-8") as handle:
        for line in handle:
            tokens = line.rstrip("\n").split("\t", 1)[-1].split()
            lengths[len(tokens)] += 1
            words.update(tokens)
    return {
        "source": collection.name,
        "passages": sum(lengths.values()),
        "length_histogram": sorted(lengths.items()),
        "words": words.most_common(5_000),
    }


def write(rows: int, out: Path, seed: int) -> None:
    profile = json.loads(PROFILE.read_text())
    sizes_seen, counts = np.array(profile["length_histogram"]).T
    vocab = np.array([w for w, _ in profile["words"]], dtype=object)
    weights = np.array([c for _, c in profile["words"]], dtype=np.float64)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            sizes = rng.choice(sizes_seen, size=n, p=counts / counts.sum())
            drawn = vocab[rng.choice(len(vocab), size=int(sizes.sum()), p=weights / weights.sum())]
            bounds = np.concatenate(([0], np.cumsum(sizes)))
            handle.writelines(
                f"{start + i}\t{' '.join(drawn[bounds[i] : bounds[i + 1]])}\n" for i in range(n)
            )
            print(f"\r{start + n:,}/{rows:,}", end="", file=sys.stderr, flush=True)
    tmp.replace(out)
    print(f"\nwrote {rows:,} passages to {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--fit", type=Path, help="rebuild msmarco_profile.json from a real collection.tsv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.fit is not None:
        PROFILE.write_text(json.dumps(fit(args.fit)) + "\n")
        print(f"wrote {PROFILE}", file=sys.stderr)
    if args.rows is not None and args.out is not None:
        write(args.rows, args.out, args.seed)


if __name__ == "__main__":
    main()
