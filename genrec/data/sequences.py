"""The in-memory form of a dataset: one chronological item sequence per user.

Why: every reader (aligned files, pairs, interaction tables) ends in this one shape, so splits,
training, export calibration and serving never care where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.item_map import ItemMap


@dataclass
class SequenceData:
    """Per-user sequences of internal item ids (int64, oldest first), with optional times."""

    users: list[str]
    items: list[np.ndarray]
    times: list[np.ndarray] | None
    item_map: ItemMap
    source: str
    dropped_users: int = 0

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError(f"{len(self.users)} users but {len(self.items)} sequences")
        if self.times is not None:
            if len(self.times) != len(self.items):
                raise ValueError(f"{len(self.items)} sequences but {len(self.times)} time rows")
            for user, seq, ts in zip(self.users, self.items, self.times):
                if len(seq) != len(ts):
                    raise ValueError(f"user {user}: {len(seq)} items but {len(ts)} times")

    @property
    def num_items(self) -> int:
        """Catalogue size (internal ids are 1..num_items, 0 is padding)."""
        return self.item_map.num_items

    @property
    def num_interactions(self) -> int:
        """Total number of (user, item) events kept."""
        return int(sum(len(s) for s in self.items))

    def __len__(self) -> int:
        return len(self.users)
