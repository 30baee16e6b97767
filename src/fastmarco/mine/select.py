"""Which candidates of one query become its negatives: the margin rules and sampling, on arrays.

Two rule families, kept apart because they pick different negatives from the same scores:

* **sentence-transformers** (`--absolute-margin`, `--relative-margin`, `--max-score`, or none):
  `util.mine_hard_negatives`' definitions. Every candidate of every system is scored; a candidate is
  dropped when `score + absolute_margin > min_pos`, when `score > min_pos - |min_pos| * relative_margin`,
  or when `score > max_score` (`min_pos`: the lowest-scoring positive of the query). The survivors are
  ranked by score; ranks `range_min .. depth` are the pool, of which the best (`top`) or a random
  sample (`random`) of `num_negatives` are the negatives.
* **MS MARCO v3** (`--ce-margin`): the rule the v3 bi-encoders were trained with
  (`train_bi-encoder_mnrl.py`): a candidate is kept when `score <= min_pos - ce_margin`; each system's
  candidates are read in that system's retrieval order (after skipping its first `range_min`, up to
  `depth`), and each system contributes its first (`top`) or a random sample (`random`) of
  `num_negatives` kept candidates; the systems' picks are joined, duplicates dropped.

The two agree on which candidates pass (`ce_margin` = `absolute_margin`) but not on the order they
are picked in: sentence-transformers ranks by the re-scored score, v3 keeps each retriever's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError

Sampling = Literal["top", "random"]


@dataclass(frozen=True)
class Selection:
    depth: int
    num_negatives: int = 3
    range_min: int = 0
    sampling: Sampling = "top"
    ce_margin: float | None = None  # v3
    absolute_margin: float | None = None  # sentence-transformers
    relative_margin: float | None = None
    max_score: float | None = None

    def __post_init__(self) -> None:
        if self.depth < 1 or self.num_negatives < 1 or self.range_min < 0:
            raise InputError("depth and num_negatives must be at least 1, range_min at least 0")
        if self.range_min >= self.depth:
            raise InputError(f"range_min {self.range_min} must be below depth {self.depth}")
        if self.num_negatives > self.depth - self.range_min:
            raise InputError(
                f"cannot pick {self.num_negatives} negatives from ranks {self.range_min}..{self.depth}; "
                "lower --num-negatives or --range-min, or raise --depth"
            )
        if self.sampling not in ("top", "random"):
            raise InputError(f"sampling must be 'top' or 'random', got {self.sampling!r}")
        if self.ce_margin is not None and self.st_filters:
            raise InputError(
                "--ce-margin (the v3 rule) cannot be combined with --absolute-margin, --relative-margin "
                "or --max-score (sentence-transformers' rules)"
            )

    @property
    def st_filters(self) -> bool:
        return any(v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score))

    @property
    def rule(self) -> str:
        return "v3" if self.ce_margin is not None else "sentence-transformers"

    @property
    def needs_positive_scores(self) -> bool:
        return (
            self.ce_margin is not None or self.absolute_margin is not None or self.relative_margin is not None
        )


@dataclass
class Picked:
    """One query's outcome. Indexes point into the query's candidate arrays."""

    kept: npt.NDArray[np.bool_]  # passed the margin rule
    negatives: npt.NDArray[np.int64]  # the chosen negatives, in pick order
    skipped: dict[str, int]  # candidates dropped, per rule


def pick(
    scores: npt.NDArray[np.float32],
    by_system: list[npt.NDArray[np.int64]],
    positive_scores: npt.NDArray[np.float32],
    selection: Selection,
    rng: np.random.Generator,
) -> Picked:
    """`scores`: the query's candidates (positives already removed), in pool order; `by_system`: each
    system's candidates as indexes into them, in that system's retrieval order."""
    kept = np.ones(len(scores), dtype=np.bool_)
    skipped: dict[str, int] = {}
    lowest = float(positive_scores.min()) if len(positive_scores) else float("nan")

    def drop(name: str, removed: npt.NDArray[np.bool_]) -> None:
        removed &= kept
        if removed.any():
            skipped[name] = int(removed.sum())
            kept[removed] = False

    if selection.needs_positive_scores and not len(positive_scores):
        raise InputError("a margin needs the query's positive scores, and this query has none")
    if selection.ce_margin is not None:
        drop("ce_margin", scores > np.float32(lowest - selection.ce_margin))
    if selection.absolute_margin is not None:
        drop("absolute_margin", scores + np.float32(selection.absolute_margin) > np.float32(lowest))
    if selection.relative_margin is not None:
        threshold = np.float32(lowest) - np.float32(abs(lowest)) * np.float32(selection.relative_margin)
        drop("relative_margin", scores > threshold)
    if selection.max_score is not None:
        drop("max_score", scores > np.float32(selection.max_score))

    if selection.ce_margin is not None:
        chosen: list[int] = []
        for order in by_system:
            window = order[selection.range_min : selection.depth]
            passing = window[kept[window]]
            take = _sample(passing, selection, rng)
            chosen.extend(int(i) for i in take if int(i) not in chosen)
        return Picked(kept, np.asarray(chosen, dtype=np.int64), skipped)
    survivors = np.flatnonzero(kept)
    ranked = survivors[np.argsort(-scores[survivors], kind="stable")]
    window = ranked[selection.range_min : selection.depth]
    negatives = _sample(window, selection, rng)
    return Picked(kept, negatives, skipped)


def _sample(
    window: npt.NDArray[np.int64], selection: Selection, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """The first num_negatives, or as many drawn at random and kept in window order."""
    n = min(selection.num_negatives, len(window))
    if selection.sampling == "top" or n == len(window):
        return window[:n]
    return window[np.sort(rng.choice(len(window), size=n, replace=False))]
