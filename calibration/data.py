"""Calibration and judging users, and the real graph inputs the calibrator sees.

Users: the calibration users come from ``--calib-data``, the judging users from ``--holdout``
(default: the same data), and no user id is in both: a variant judged on the users it was
calibrated on would be graded on its own homework. Both sets are leave-one-out test examples
(history = every item but the last, target = the last), drawn with a fixed seed.

Inputs: static int8 needs the activation ranges each graph sees in serving, so calibration
data is recorded from the fp32 graphs running the serving loop itself (``generate`` for
prefill and steps, ``rank`` for M-FALCON), not made up: prefill gets real histories, step and
rank get the real, non-empty caches the fp32 prefill and steps wrote, with the loop's own
padding to batch gears, exclusions and positions. ``_Recorder`` is the onnxruntime backend
with its one graph-running method wrapped to copy every feed (cache tensors included) before
the run, because a step writes its cache in place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genrec.errors import DataError

__all__ = ["UserSets", "FeedReader", "record_feeds", "split_users", "feeds_digest"]


@dataclass
class UserSets:
    """Disjoint calibration and judging requests (raw ids) and the judging targets."""

    calib: list  # Request
    judge: list  # Request
    targets: list[int]  # raw held-out item of each judging request
    calib_source: str
    judge_source: str
    dropped_overlap: int = 0  # holdout users left out because they calibrate
    data_sha256: str = ""  # of the calibration users' ids, items and times as used

    def info(self) -> dict[str, Any]:
        return {"calibration": {"data": self.calib_source, "users": len(self.calib),
                                "data_sha256": self.data_sha256},
                "judging": {"data": self.judge_source, "users": len(self.judge),
                            "dropped_because_calibrating": self.dropped_overlap, "disjoint": True}}


def _examples(path: str | Path, item_map) -> Any:
    from genrec.data import leave_one_out, read_sequences

    return leave_one_out(read_sequences(path, item_map=item_map)).examples("test")


def _requests(ex, idx, item_map) -> tuple[list, list[int]]:
    from genrec.runtimes import Request

    reqs, targets = [], []
    for i in idx:
        items = item_map.to_raw(ex.histories[i])
        ts = None if ex.history_times is None else np.asarray(ex.history_times[i], np.int64)
        rt = None if ex.target_times is None else int(ex.target_times[i])
        reqs.append(Request(ex.users[i], items.tolist(), None if ts is None else ts.tolist(), rt))
        targets.append(int(item_map.to_raw(np.array([ex.targets[i]]))[0]))
    return reqs, targets


def split_users(calib_data: str | Path, holdout: str | Path | None, id_map: list[int], calib_users: int,
                judge_users: int, seed: int = 0) -> UserSets:
    """Draw ``calib_users`` calibration users and ``judge_users`` judging users, disjoint."""
    from genrec.data import ItemMap

    item_map = ItemMap.from_list(id_map)
    cal = _examples(calib_data, item_map)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cal))
    cal_idx = np.sort(order[:calib_users])
    calib, cal_targets = _requests(cal, cal_idx, item_map)
    taken = {cal.users[i] for i in cal_idx}
    if holdout is None:
        rest, dropped, ex = order[calib_users:], 0, cal
    else:
        ex = _examples(holdout, item_map)
        allowed = [i for i in range(len(ex)) if ex.users[i] not in taken]
        dropped = len(ex) - len(allowed)
        rest = np.asarray(allowed)[np.random.default_rng(seed + 1).permutation(len(allowed))]
    judge_idx = np.sort(rest[:judge_users])
    if len(judge_idx) == 0:
        raise DataError(f"no judging users left: {calib_data} has {len(cal)} users and {calib_users} calibrate; "
                        "lower --calib-users or pass --holdout with other users")
    judge, targets = _requests(ex, judge_idx, item_map)
    assert not taken & {r.user_id for r in judge}, "calibration and judging users overlap"
    for r, t in zip(calib, cal_targets):  # rank calibration: the held-out item among candidates
        r.candidates = [t]
    h = hashlib.sha256()
    for r in calib:
        h.update(repr((r.user_id, list(map(int, r.items)), r.timestamps, r.request_time)).encode())
    return UserSets(calib, judge, targets, str(calib_data), str(holdout or calib_data), dropped, h.hexdigest())


def _with_candidates(calib: list, pool: np.ndarray, m: int, seed: int) -> list:
    """Each calibration request with M real candidates: its held-out item, then items other
    calibration users interacted with (a rank request scores plausible items, not noise)."""
    from genrec.runtimes import Request

    rng = np.random.default_rng(seed)
    out = []
    for r in calib:
        others = rng.choice(pool, size=m - 1, replace=pool.size < m - 1).tolist()
        out.append(Request(r.user_id, r.items, r.timestamps, r.request_time, [], list(r.candidates or []) + others))
    return out


@dataclass
class Feeds:
    """Recorded inputs per graph: one dict of numpy arrays per graph call."""

    graphs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=lambda: {"prefill": [], "step": [],
                                                                                       "rank": []})

    def counts(self) -> dict[str, int]:
        return {g: len(v) for g, v in self.graphs.items()}


def _recorder_class():
    from genrec.runtimes.onnxrt import OrtBackend

    class _Recorder(OrtBackend):
        """The fp32 onnxruntime backend, copying every graph's feeds before it runs."""

        feeds: Feeds

        def _run(self, graph, feeds, b, cache_in=None, cache_out=None):  # noqa: ANN001
            rec = {k: np.array(v, copy=True) for k, v in feeds.items()}
            for name, value in zip(self._past, cache_in or []):
                rec[name] = np.array(value.numpy(), copy=True)
            self.feeds.graphs[graph].append(rec)
            return super()._run(graph, feeds, b, cache_in, cache_out)

    return _Recorder


def record_feeds(bundle, users: UserSets, steps: int = 3, batch_size: int | None = None, threads: int | None = None,
                 seed: int = 0) -> Feeds:
    """Run the calibration users through the fp32 graphs (greedy slates of ``steps`` items,
    then M-FALCON ranking) and return every graph call's inputs."""
    from genrec.runtimes import SearchParams, generate, rank

    rec = _recorder_class()(bundle, threads=threads)
    rec.feeds = Feeds()
    d = bundle.dims
    try:
        steps = max(1, min(steps, d.capacity - d.max_history))
        generate(rec, users.calib, steps, SearchParams("greedy"), batch_size=batch_size)
        pool = np.unique(np.concatenate([np.asarray(r.items, np.int64) for r in users.calib]))
        rank(rec, _with_candidates(users.calib, pool, d.rank_candidates, seed), batch_size=batch_size)
    finally:
        rec.close()
    for g, calls in rec.feeds.graphs.items():
        if not calls:
            raise DataError(f"calibration recorded no {g} inputs")
    return rec.feeds


def feeds_digest(feeds: Feeds) -> str:
    """sha256 over every recorded tensor (graph, call, name, dtype, shape, bytes), in order."""
    h = hashlib.sha256()
    for g in sorted(feeds.graphs):
        for k, call in enumerate(feeds.graphs[g]):
            for name in sorted(call):
                a = np.ascontiguousarray(call[name])
                h.update(f"{g}/{k}/{name}/{a.dtype}/{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


class FeedReader:
    """onnxruntime's ``CalibrationDataReader`` over one graph's recorded calls.

    (Subclassed at construction from ``onnxruntime.quantization.CalibrationDataReader`` so
    that importing this module does not import onnxruntime.)"""

    def __new__(cls, calls: list[dict[str, np.ndarray]], names: set[str]):
        from onnxruntime.quantization import CalibrationDataReader

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._calls = [{k: v for k, v in c.items() if k in names} for c in calls]
                self._it = iter(self._calls)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

            def __len__(self) -> int:
                return len(self._calls)

            def set_range(self, start_index: int, end_index: int) -> None:
                self._it = iter(self._calls[start_index:end_index])

        return _Reader()
