"""Leave-one-out split, the standard protocol of SASRec/BERT4Rec/HSTU papers.

Why: numbers are only comparable with published ones when the split is exactly theirs: per user
the last item is the test target, the one before it the validation target, and training sees
everything before the validation target. Histories are views into the original arrays (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.item_map import ItemMap
from genrec.data.sequences import SequenceData
from genrec.errors import DataError

WHICH = ("valid", "test")
HOLDOUTS = ("valid", "last")


def _holdout_cut(holdout: str) -> int:
    """Items held out of training per user: 2 (validation + test) or 1 (test only, Meta)."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    return 2 if holdout == "valid" else 1


@dataclass
class Examples:
    """One next-item example per user: rank ``targets[i]`` given ``histories[i]``."""

    users: list[str]
    histories: list[np.ndarray]
    history_times: list[np.ndarray] | None
    targets: np.ndarray
    target_times: np.ndarray | None

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Split:
    """A leave-one-out split over ``data`` (every user has at least 3 items)."""

    data: SequenceData

    @property
    def item_map(self) -> ItemMap:
        return self.data.item_map

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def users(self) -> list[str]:
        return self.data.users

    def __len__(self) -> int:
        return len(self.data)

    def train_sequences(self, holdout: str = "valid") -> list[np.ndarray]:
        """Per user ``items[:n-2]`` (``holdout="valid"``: validation and test targets held out)
        or ``items[:n-1]`` (``holdout="last"``: Meta's convention, MODELS.md §1.6, where only
        the test item is held out and there is no validation item to select a model on)."""
        cut = _holdout_cut(holdout)
        return [seq[:-cut] for seq in self.data.items]

    def train_times(self, holdout: str = "valid") -> list[np.ndarray] | None:
        """Times aligned with :meth:`train_sequences`, or None without timestamps."""
        if self.data.times is None:
            return None
        cut = _holdout_cut(holdout)
        return [ts[:-cut] for ts in self.data.times]

    def examples(self, which: str = "test") -> Examples:
        """``"valid"``: history ``items[:n-2]``, target ``items[n-2]``;
        ``"test"``: history ``items[:n-1]``, target ``items[n-1]``."""
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {which!r}")
        cut = 2 if which == "valid" else 1
        items, times = self.data.items, self.data.times
        targets = np.fromiter((s[-cut] for s in items), dtype=np.int64, count=len(items))
        return Examples(
            users=list(self.data.users),
            histories=[s[:-cut] for s in items],
            history_times=None if times is None else [t[:-cut] for t in times],
            targets=targets,
            target_times=(
                None
                if times is None
                else np.fromiter((t[-cut] for t in times), dtype=np.int64, count=len(times))
            ),
        )

    def sample(self, n: int, seed: int | None = None) -> Split:
        """A split over ``n`` users: the first ``n`` (seed None) or a seeded random ``n``,
        kept in their original order. For quick runs; ``n >= len(self)`` returns all users."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        total = len(self.data)
        if n >= total:
            return self
        if seed is None:
            idx = np.arange(n)
        else:
            idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        d = self.data
        return Split(
            SequenceData(
                users=[d.users[i] for i in idx],
                items=[d.items[i] for i in idx],
                times=None if d.times is None else [d.times[i] for i in idx],
                item_map=d.item_map,
                source=d.source,
                dropped_users=d.dropped_users,
            )
        )


def leave_one_out(data: SequenceData) -> Split:
    """Split ``data`` leave-one-out; DataError if a user has fewer than 3 items."""
    for user, seq in zip(data.users, data.items):
        if len(seq) < 3:
            raise DataError(
                f"{data.source}: user {user!r} has {len(seq)} item(s); leave-one-out needs at "
                "least 3 (read with min_interactions>=3)"
            )
    return Split(data)
