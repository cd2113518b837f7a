"""Request validation: every bad request is a DataError that names it and says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.data import ItemMap
from genrec.errors import DataError
from genrec.runtimes import Request
from genrec.runtimes.requests import request_from_json, validate_request, validate_requests

ITEMS = ItemMap.from_list([10, 20, 30, 40, 50])


def check(req, hstu=True, **kw):
    return validate_request(req, ITEMS, hstu, "line 7", max_history=3, **kw)


def test_valid_request_maps_raw_to_internal_ids():
    p = check(Request("u", [30, 10, 50], [1, 2, 2], request_time=3, exclude=[20], candidates=[40, 10]))
    assert p.history.tolist() == [3, 1, 5] and p.exclude.tolist() == [2]
    assert p.candidates.tolist() == [4, 1] and p.raw_candidates == [40, 10]
    assert p.request_time == 3
    p = check(Request("u", [30, 10, 50], [1, 2, 2]), hstu=False)
    assert p.request_time == 2  # off HSTU it is unused; defaults to the last timestamp
    p = check(Request("u", np.array([20]), None), hstu=False)  # timestamps optional off HSTU
    assert p.history.tolist() == [2] and p.times is None


@pytest.mark.parametrize("req, message", [
    (Request("u", [10, 99], [1, 2], 3), "line 7: unknown item id 99 in items"),
    (Request("u", [10], [1], 1, exclude=[7, 8]), "unknown item id 7 \\(and 1 more\\) in exclude"),
    (Request("u", [10], [1], 1, candidates=[20, 1000]), "unknown item id 1000 in candidates"),
    (Request("u", [10, -20], [1, 2], 2), "negative item id -20"),
    (Request("u", [10, 2.5], [1, 2], 2), r"items\[1\] is 2.5, not an integer"),
    (Request("u", [10, True], [1, 2], 2), r"items\[1\] is True, not an integer"),
    (Request("u", "10 20", [1]), "items must be a list of integers"),
    (Request("u", [], []), "empty history"),
    (Request("u", [10, 20], None), "timestamps are required by this model \\(hstu\\)"),
    (Request("u", [10, 20, 30], [5, 9, 7], 9), "timestamps go backwards at index 2 \\(7 after 9\\)"),
    (Request("u", [10, 20], [5]), "2 items but 1 timestamps"),
    (Request("u", [10, 20], [5, 6], request_time=4), "request_time 4 is before the last history timestamp 6"),
    (Request("u", [10, 20], [5, 6], request_time="soon"), "request_time is 'soon', not an integer"),
    (Request("u", [10, 20, 30, 40], [0, 1, 2**31, 2**31 + 1], 2**31 + 1), "more than int32 holds"),
    (Request("u", [10, 20], [5, 6]), "request_time is required by this model \\(hstu\\)"),
    (Request("u", [10, 20], [5, 6], request_time=2**63), "request_time 9223372036854775808 is too large"),
    (Request("u", [10, 20], [5, 6], request_time=True), "request_time is True, not an integer"),
    # increasing, but their difference wraps around int64: compared, not subtracted
    (Request("u", [10, 20], [-(2**63), 2**63 - 1], 2**63 - 1), "timestamps span 18446744073709551615 units"),
    (Request("u", [10, 20], [2**63 - 1, -(2**63)], 2**63 - 1), "timestamps go backwards at index 1"),
    (Request("u", [10, "x" * 1000], [1, 2], 3), r"items\[1\] is 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\.\.\.,"),
])
def test_bad_requests_are_named_data_errors(req, message):
    with pytest.raises(DataError, match=message):
        check(req)


def test_rank_needs_candidates_and_old_times_beyond_t_are_ignored():
    with pytest.raises(DataError, match="line 7: no candidates to rank"):
        check(Request("u", [10], [1], 1), need_candidates=True)
    # only the last T=3 timestamps are rebased into int32; an old first one does not matter
    check(Request("u", [10, 20, 30, 40], [-(2**40), 1, 2, 3], 3))


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "line 3: expected a JSON object, got list"),
    ({"items": [10]}, "missing 'user_id'"),
    ({"user_id": 1}, "missing 'items'"),
    ({"user_id": 1, "items": [10], "itmes": []}, "unknown field\\(s\\) 'itmes'"),
    # every field with a JSON value of the wrong type: one named error, never a TypeError
    ({"user_id": 1, "items": None}, "items is null; send a list of integers"),
    ({"user_id": 1, "items": "10 20"}, "items is a string; send a list"),
    ({"user_id": 1, "items": {"0": 10}}, "items is an object; send a list"),
    ({"user_id": 1, "items": 10}, "items is an integer; send a list"),
    ({"user_id": 1, "items": [10], "timestamps": 5}, "timestamps is an integer; send a list"),
    ({"user_id": 1, "items": [10], "exclude": True}, "exclude is a boolean; send a list"),
    ({"user_id": 1, "items": [10], "candidates": 1.5}, "candidates is a number; send a list"),
    ({"user_id": 1, "items": [10], "request_time": [5]}, "request_time is a list \\[5\\]; send an integer"),
    ({"user_id": 1, "items": [10], "request_time": 5.0}, "request_time is a number 5.0; send an integer"),
    ({"user_id": None, "items": [10]}, "user_id is null; send a string or an integer"),
    ({"user_id": [1], "items": [10]}, "user_id is a list; send a string or an integer"),
    ({"user_id": {"id": 1}, "items": [10]}, "user_id is an object"),
    ({"user_id": 1.5, "items": [10]}, "user_id is a number"),
    ({"user_id": False, "items": [10]}, "user_id is a boolean"),
    ({"user_id": 10**19, "items": [10]}, "user_id 10000000000000000000 is too large for int64"),
])
def test_json_objects_are_checked(obj, message):
    with pytest.raises(DataError, match=message):
        request_from_json(obj, "line 3")


def test_json_nulls_mean_absent():
    req = request_from_json({"user_id": 3, "items": [10], "timestamps": None, "exclude": None,
                             "candidates": None, "request_time": None}, "l")
    assert req.timestamps is None and req.exclude == () and req.candidates is None
    assert req.request_time is None
    with pytest.raises(DataError, match="request_time is required"):  # and HSTU needs it
        validate_request(request_from_json({"user_id": 3, "items": [10], "timestamps": [4],
                                            "request_time": None}, "l"), ITEMS, True, "l")


GOOD = [Request("a", [30, 10, 50], [1, 2, 2], 2, exclude=[20], candidates=[40, 10]),
        Request("b", np.array([20, 40]), np.array([5, 9]), request_time=12, exclude=np.array([50])),
        Request("c", [10, 20, 30, 40], [-(2**40), 1, 2, 3], 3, candidates=np.array([50]))]


def check_all(reqs, hstu=True, **kw):
    return validate_requests(reqs, ITEMS, hstu, lambda i: f"request {i}", max_history=3, **kw)


def _as_lists(r: Request) -> Request:
    def conv(v):
        return v.tolist() if isinstance(v, np.ndarray) else v
    return Request(r.user_id, conv(r.items), conv(r.timestamps), r.request_time, conv(r.exclude), conv(r.candidates))


@pytest.mark.parametrize("lists", [False, True])  # mixed arrays and lists; lists only (JSON)
def test_a_batch_validates_like_one_request_at_a_time(lists):
    reqs = [_as_lists(r) for r in GOOD] if lists else GOOD
    for hstu in (True, False):
        one = [validate_request(r, ITEMS, hstu, "x", max_history=3) for r in reqs]
        for a, b in zip(check_all(reqs, hstu), one):
            assert (a.user_id, a.request_time, a.raw_candidates) == (b.user_id, b.request_time, b.raw_candidates)
            for f in ("history", "times", "exclude", "candidates"):
                x, y = getattr(a, f), getattr(b, f)
                assert (x is None and y is None) or (x.dtype == y.dtype and x.tolist() == y.tolist())
    assert check_all([]) == []


@pytest.mark.parametrize("bad", [2, 0])
def test_a_batch_names_its_first_bad_request(bad):
    late = Request("z", [10, 99], [1, 2], 2)  # unknown id, but after the first bad one
    reqs = [*GOOD, late]
    reqs.insert(bad, Request("u", [10, 20, 30], [5, 9, 7], 9))
    with pytest.raises(DataError, match=f"^request {bad}: timestamps go backwards at index 2"):
        check_all(reqs)
    reqs[bad] = Request("u", [10, 20], [5, 6], request_time=2**62)  # too big for the batch arrays
    check_all(reqs[:-1], hstu=False)  # fine off HSTU (no int32 span) when checked one by one ...
    with pytest.raises(DataError, match="request 4: unknown item id 99 in items"):
        check_all(reqs, hstu=False)  # ... and the later unknown id is still found
    reqs[bad] = Request("u", [10, 20], [5, 6], request_time=2**70)  # not an int64 at all
    with pytest.raises(DataError, match=f"^request {bad}: request_time 1180591620717411303424 is too large"):
        check_all(reqs, hstu=False)


def test_a_list_only_batch_still_names_a_bad_element():
    reqs = [_as_lists(r) for r in GOOD]
    reqs[1] = Request("b", [20, 2.5], [5, 9], 9)
    with pytest.raises(DataError, match=r"^request 1: items\[1\] is 2.5, not an integer"):
        check_all(reqs)
