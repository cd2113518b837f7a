"""The fallback search: the fewest node groups to keep in fp32 until the gate passes.

Trying every subset is exponential (2 layers x 2 kinds + embeddings = 5 groups already make
32 quantisations), so the search is greedy with a final prune, in at most ``2|G| + 1`` tries:

1. nothing extra excluded (the default: scoring head, TopK and log_z only);
2. each group alone: the sensitivity of every group, and the answer if one group suffices;
3. groups added most-helpful first until the gate passes;
4. each group of that set dropped again if the gate still passes without it.

The result is the smallest set this finds, not a proof of minimality; the trail of every try
(groups, measured loss) goes into the manifest, so a reader sees what was tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Try", "SearchResult", "search_groups"]


@dataclass(frozen=True)
class Try:
    excluded: tuple[str, ...]
    loss: float  # relative NDCG@10 loss
    passed: bool


@dataclass
class SearchResult:
    excluded: tuple[str, ...] | None  # None: nothing passed short of every group
    trail: list[Try] = field(default_factory=list)

    @property
    def best(self) -> Try:
        return min(self.trail, key=lambda t: t.loss)


def search_groups(groups: list[str], evaluate: Callable[[tuple[str, ...]], float], max_loss: float) -> SearchResult:
    """``evaluate(excluded)`` quantises with those groups kept fp32 and returns the loss."""
    res = SearchResult(None)
    seen: dict[tuple[str, ...], float] = {}

    def run(excl) -> bool:
        key = tuple(sorted(excl))
        if key not in seen:
            seen[key] = evaluate(key)
            res.trail.append(Try(key, seen[key], seen[key] <= max_loss))
        return seen[key] <= max_loss

    if run(()):
        res.excluded = ()
        return res
    every = tuple(sorted(groups))
    single = {g: (run((g,)), seen[(g,)]) for g in groups if (g,) != every}
    passing = sorted((loss, g) for g, (ok, loss) in single.items() if ok)
    if passing:
        res.excluded = (passing[0][1],)
        return res
    order = [g for _, g in sorted((loss, g) for g, (_, loss) in single.items())]
    chosen: list[str] = []
    for g in order:
        chosen.append(g)
        if tuple(sorted(chosen)) == every:
            break  # every group fp32: nothing left quantised; refused by the caller
        if run(chosen):
            for h in reversed(list(chosen)):  # prune: least helpful first
                trial = [x for x in chosen if x != h]
                if trial and run(trial):
                    chosen = trial
            res.excluded = tuple(sorted(chosen))
            return res
    return res
