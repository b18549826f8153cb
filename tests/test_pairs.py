"""Frame-pair parsing (pure, no servers): pairs are a set, every shape of bad request is one line,
and nothing recurses, overflows or prints an unbounded value."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from boundary_inference.pairs import (
    MAX_JSON_DEPTH,
    FramePairs,
    PairsProblem,
    RequestJsonError,
    json_depth,
    loads_request_json,
    max_json_chars,
    parse_frame_pairs,
)
from tests.support import nested

FRAMES = 120


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: pure checks, no server (saves 10-20 s alone)."""


LIMIT = 1000


def parse(value: Any, *, max_pairs: int = LIMIT) -> FramePairs | PairsProblem:
    return parse_frame_pairs(value, frame_count=FRAMES, max_pairs=max_pairs)


def test_duplicates_are_dropped_and_counted_in_first_seen_order() -> None:
    result = parse([[0, 1]] * 15_000, max_pairs=100_000)
    assert isinstance(result, FramePairs)
    assert (result.pairs, result.requested, result.duplicates) == ([(0, 1)], 15_000, 14_999)
    mixed = parse([[5, 6], [0, 1], (5, 6), [np.int64(0), np.int32(1)], [2, 3]])
    assert isinstance(mixed, FramePairs)
    assert mixed.pairs == [(5, 6), (0, 1), (2, 3)] and mixed.duplicates == 2
    assert all(type(a) is int and type(b) is int for a, b in mixed.pairs)


def test_default_and_range_spec() -> None:
    every = parse(None)
    assert isinstance(every, FramePairs) and len(every.pairs) == FRAMES - 1
    assert every.pairs[0] == (0, 1) and every.pairs[-1] == (FRAMES - 2, FRAMES - 1)
    spec = parse({"start": 10, "stop": 20, "step": 5, "gap": 3})
    assert isinstance(spec, FramePairs) and spec.pairs == [(10, 13), (15, 18)]
    # A step larger than the range is one pair: legal, not an overflow.
    one = parse({"start": 0, "step": 10**30})
    assert isinstance(one, FramePairs) and one.pairs == [(0, 1)]


BAD: list[tuple[str, Any, str]] = [
    ("empty list", [], "non-empty"),
    ("a string", "0,1", "non-empty list"),
    ("an int", 5, "got int"),
    ("a set", {0, 1}, "got set"),
    ("bytes", b"[[0,1]]", "got bytes"),
    ("a triple", [[0, 1, 2]], "frame_pairs[0] must be a [f1, f2] pair; got list of length 3"),
    ("a scalar pair", [0, 1], "frame_pairs[0] must be a [f1, f2] pair; got int"),
    ("deep", nested(5000), "frame_pairs[0] must be a [f1, f2] pair; got list of length 1"),
    ("nested dict", [[{"a": 1}, 2]], "frame_pairs[0][0] is dict"),
    ("booleans", [[False, True]], "integers; frame_pairs[0][0] is bool False"),
    ("numpy booleans", [[np.bool_(False), 1]], "is bool"),
    ("floats", [[0.0, 1.0]], "frame_pairs[0][0] is float 0.0"),
    ("NaN", [[0, float("nan")]], "is float nan"),
    ("infinity", [[0, float("inf")]], "is float inf"),
    ("strings", [["0", "1"]], "is str '0'"),
    ("None", [[0, None]], "is NoneType"),
    ("equal", [[3, 3]], "0 <= f1 < f2"),
    ("reversed", [[5, 2]], "first is #0: [5, 2]"),
    ("negative", [[-1, 2]], "first is #0: [-1, 2]"),
    ("past the end", [[0, 1], [1, FRAMES]], "1 of 2 frame pairs violate"),
    ("huge int", [[0, 10**30]], "a 100-bit integer"),
    ("int past the str limit", [[0, 10**5000]], "-bit integer"),
    ("spec unknown key", {"begin": 0}, "unknown keys ['begin']"),
    ("spec mixed key types", {1: 2, "a": 3}, "unknown keys [1, 'a']"),
    ("spec many keys", {f"k{i}": i for i in range(10_000)}, ", ...]"),
    ("spec bool", {"start": True}, "start is bool True"),
    ("spec float", {"stop": 10.0}, "stop is float 10.0"),
    ("spec nested", {"start": {"a": [1]}}, "start is dict"),
    ("spec step 0", {"step": 0}, "step >= 1"),
    ("spec negative gap", {"gap": -1}, "gap >= 1"),
    ("spec past the end", {"start": 0, "stop": 500}, "violates 0 <= f1 < f2"),
    ("spec absurd stop", {"start": 0, "stop": 10**30}, "stop=a 100-bit integer"),
    ("spec absurd start", {"start": -(10**30), "stop": 10, "step": 10**29}, "first pair"),
    ("spec negative stop", {"stop": -(10**30)}, "selects no pairs"),
    ("spec huge gap", {"gap": 10**30}, "selects no pairs"),
    ("spec reversed", {"start": 50, "stop": 10}, "selects no pairs"),
]


@pytest.mark.parametrize(("value", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_pairs_are_one_line_problems(value: Any, fragment: str) -> None:
    result = parse(value)
    assert isinstance(result, PairsProblem)
    assert not result.too_many
    assert fragment in result.reason
    assert "\n" not in result.reason and len(result.reason) < 400


def test_size_limit_is_checked_before_any_element() -> None:
    too_many = parse([["not", "checked"]] * (LIMIT + 1))
    assert isinstance(too_many, PairsProblem) and too_many.too_many
    assert too_many.requested == LIMIT + 1 and f"the limit is {LIMIT}" in too_many.reason
    spec = parse_frame_pairs({"start": 0, "stop": 10**9}, frame_count=10**9 + 1, max_pairs=LIMIT)
    assert isinstance(spec, PairsProblem) and spec.too_many and spec.requested == 10**9


def test_a_large_request_parses_in_linear_time() -> None:
    pairs = [[i, i + 1] for i in range(100_000)]
    started = time.process_time()
    result = parse_frame_pairs(pairs, frame_count=100_001, max_pairs=100_000)
    assert isinstance(result, FramePairs) and len(result.pairs) == 100_000
    # Printed, not asserted: speed belongs in benchmarks.
    print(f"100,000 pairs parsed in {time.process_time() - started:.3f} s of CPU")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 5000 + "]" * 5000, f"nested more than {MAX_JSON_DEPTH} levels deep"),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "levels deep"),
        ("[[0, NaN]]", "NaN is not a JSON number"),
        ("[[0, -Infinity]]", "-Infinity is not a JSON number"),
        ("1" * 5000, "not valid JSON: Exceeds the limit"),
        ("not json", "not valid JSON: Expecting value"),
        ("[[0, 1]", "not valid JSON"),
        ("[[0,1]]" + " " * 200_000, "characters long; the limit is 100000"),
    ],
)
def test_request_json_is_bounded_and_one_line(text: str, fragment: str) -> None:
    with pytest.raises(RequestJsonError) as error:
        loads_request_json(text, what="--pairs", max_chars=100_000)
    message = str(error.value)
    assert message.startswith("--pairs") and fragment in message and "\n" not in message


def test_request_json_passes_what_validation_should_judge() -> None:
    assert loads_request_json("[[0, 1], [1, 2]]", what="x", max_chars=100) == [[0, 1], [1, 2]]
    # Readable but wrong shapes pass the parser: the flow refuses them, recorded.
    assert loads_request_json("[[[0, 1]]]", what="x", max_chars=100) == [[[0, 1]]]
    assert loads_request_json('{"start": 1e400}', what="x", max_chars=100) == {
        "start": float("inf")
    }
    depth = MAX_JSON_DEPTH
    assert (
        json_depth(loads_request_json("[" * depth + "]" * depth, what="x", max_chars=999), limit=99)
        == depth
    )
    assert max_json_chars(100_000) > len(json.dumps([[99_999, 100_000]] * 100_000))


def test_json_depth_does_not_recurse() -> None:
    assert json_depth(nested(100_000), limit=10) == 11
    assert json_depth({"a": [{"b": []}]}, limit=10) == 4
    assert json_depth(5, limit=10) == 0
