"""The frame pairs of a request: read with a depth and size limit, checked whole, made a set.

Accepted shapes (the flow's ``frame_pairs`` parameter; ``submit --pairs`` as JSON text):

* ``None``: every consecutive pair of the video;
* a list of ``[f1, f2]`` pairs of integers with ``0 <= f1 < f2 < frame_count``;
* a range spec ``{"start", "stop", "step", "gap"}``: the pairs ``(f, f + gap)`` for ``f`` in
  ``range(start, stop, step)`` (Prefect refuses flow parameters over 512 KB, about 30,000
  explicit pairs). Defaults: start 0, step 1, gap 1, stop = frame_count - gap.

Pairs are a set. A pair listed twice is one prediction, so duplicates are dropped here, before the
estimate, the bill and the calibration see the count (15,000 copies of one pair were once admitted
and billed as 15,000 pairs, and their apparent speed made the model look four times faster). The
caller reports how many were dropped. Dropping rather than refusing: the answer to a request with
duplicates is well defined (one probability per distinct pair) and overlapping selections are an
honest way to ask; what must not happen is paying, or calibrating, for the copies.

Nothing here recurses into the value. The shape is fixed (a list of pairs of integers), so a
structure nested 5,000 levels deep is refused at its second level with a one-line reason. JSON text
(the CLI) is parsed by :func:`loads_request_json`, which bounds its size and depth first, because
``json.loads`` itself recurses. Every message is one line, and never prints an unbounded value.

Pure: no Prefect, no services. Used by ``tasks.validate`` and by the CLI.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from boundary_inference.errors import OperatorError

# Valid requests are at most 2 levels deep; this leaves room for a readable "wrong shape" refusal
# and stays far below where json.loads (about 1,000) and Prefect's parameter resolution (about
# 300, measured) recurse out of stack.
MAX_JSON_DEPTH = 32
# Characters of JSON text per pair allowed by the size limit: "[123456, 123457], " is 18.
JSON_CHARS_PER_PAIR = 64

SPEC_KEYS = ("start", "stop", "step", "gap")

_SHOW = reprlib.Repr()
_SHOW.maxstring = 40
_SHOW.maxother = 40
_SHOW.maxlevel = 2
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 4


def show(value: Any) -> str:
    """A short repr for a message: bounded length and depth, never a RecursionError."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"a {value.bit_length()}-bit integer"
    try:
        return _SHOW.repr(value)
    except ValueError:  # an int past Python's str-conversion digit limit, inside a container
        return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class FramePairs:
    """Distinct pairs, in the order first asked for, and how many were asked for."""

    pairs: list[tuple[int, int]]
    requested: int

    @property
    def duplicates(self) -> int:
        return self.requested - len(self.pairs)


@dataclass(frozen=True)
class PairsProblem:
    """Why the pairs were refused. ``too_many``: the size limit (``frame_count_exceeded``), not a
    malformed request (``validation_failed``)."""

    reason: str
    too_many: bool = False
    requested: int | None = None


class RequestJsonError(OperatorError, ValueError):
    """JSON text that cannot be a request: not JSON, too large, too deep, NaN or Infinity."""


def _is_int(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, int | np.integer)


def parse_frame_pairs(value: Any, *, frame_count: int, max_pairs: int) -> FramePairs | PairsProblem:
    """Read ``value`` (any Python object) as the frame pairs of a video of ``frame_count``
    frames, refusing more than ``max_pairs`` requested pairs. Returns the distinct pairs or the
    first problem found."""
    if value is None:
        value = {}
    if isinstance(value, Mapping):
        return _parse_spec(value, frame_count=frame_count, max_pairs=max_pairs)
    if not isinstance(value, list | tuple):
        return PairsProblem(
            f"frame_pairs must be a non-empty list of [f1, f2] pairs or a range spec; got"
            f" {type(value).__name__}"
        )
    if len(value) == 0:
        return PairsProblem("frame_pairs must be a non-empty list of [f1, f2] pairs")
    if len(value) > max_pairs:
        return PairsProblem(
            f"{len(value)} frame pairs requested; the limit is {max_pairs} (max_frame_pairs)",
            too_many=True,
            requested=len(value),
        )
    return _parse_list(value, frame_count=frame_count)


def _parse_list(
    items: list[Any] | tuple[Any, ...], *, frame_count: int
) -> FramePairs | PairsProblem:
    pairs: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        # Fast path for the common case (plain ints in a list or tuple of two); the checks below
        # say what is wrong with anything else.
        if type(item) in _PAIR_TYPES and len(item) == 2:
            first, second = item
            if type(first) is int and type(second) is int:
                pairs.append((first, second))
                continue
        if not isinstance(item, list | tuple) or len(item) != 2:
            got = (
                f"{type(item).__name__} of length {len(item)}"
                if isinstance(item, list | tuple)
                else type(item).__name__
            )
            return PairsProblem(f"frame_pairs[{i}] must be a [f1, f2] pair; got {got}")
        for j, index in enumerate(item):
            if not _is_int(index):
                return PairsProblem(
                    f"frame indices must be integers; frame_pairs[{i}][{j}] is"
                    f" {type(index).__name__} {show(index)}"
                )
        pairs.append((int(item[0]), int(item[1])))
    # Every pair checked, vectorised. Indices past int64 are clamped first: they are out of range
    # either way (frame counts are int4), and numpy cannot hold them.
    try:
        array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    except OverflowError:
        array = np.asarray([(_clamp(a), _clamp(b)) for a, b in pairs], dtype=np.int64)
    bad_rows = np.flatnonzero(
        (array[:, 0] < 0) | (array[:, 0] >= array[:, 1]) | (array[:, 1] >= frame_count)
    )
    if bad_rows.size:
        first = int(bad_rows[0])
        f1, f2 = pairs[first]
        return PairsProblem(
            f"{bad_rows.size} of {len(pairs)} frame pairs violate 0 <= f1 < f2 < frame_count"
            f" ({frame_count}); first is #{first}: [{show(f1)}, {show(f2)}]"
        )
    unique = list(dict.fromkeys(pairs))
    return FramePairs(unique, requested=len(pairs))


_INDEX_LIMIT = 2**62
_PAIR_TYPES = (list, tuple)


def _clamp(index: int) -> int:
    return max(-_INDEX_LIMIT, min(_INDEX_LIMIT, index))


def _parse_spec(
    spec: Mapping[Any, Any], *, frame_count: int, max_pairs: int
) -> FramePairs | PairsProblem:
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        shown = ", ".join(show(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        return PairsProblem(
            f"frame_pairs spec has unknown keys [{shown}]; allowed {sorted(SPEC_KEYS)}"
        )
    for key, value in spec.items():
        if not _is_int(value):
            return PairsProblem(
                f"frame_pairs spec values must be integers; {key} is {type(value).__name__}"
                f" {show(value)}"
            )
    gap = int(spec.get("gap", 1))
    step = int(spec.get("step", 1))
    start = int(spec.get("start", 0))
    stop = int(spec.get("stop", frame_count - gap))
    if gap < 1 or step < 1:
        return PairsProblem(
            f"frame_pairs spec needs gap >= 1 and step >= 1; got gap={show(gap)}, step={show(step)}"
        )
    # Counted with integer arithmetic: len(range(...)) overflows past sys.maxsize.
    count = max(0, -(-(stop - start) // step))
    if count == 0:
        return PairsProblem(
            "frame_pairs spec selects no pairs (frame_pairs must be non-empty):"
            f" start={show(start)}, stop={show(stop)}"
        )
    last = start + (count - 1) * step
    if start < 0 or last + gap >= frame_count:
        return PairsProblem(
            f"frame_pairs spec start={show(start)}, stop={show(stop)}, step={show(step)},"
            f" gap={show(gap)} violates 0 <= f1 < f2 < frame_count ({frame_count}):"
            f" {'first' if start < 0 else 'last'} pair"
            f" [{show(start if start < 0 else last)},"
            f" {show((start if start < 0 else last) + gap)}]"
        )
    if count > max_pairs:
        return PairsProblem(
            f"{count} frame pairs requested; the limit is {max_pairs} (max_frame_pairs)",
            too_many=True,
            requested=count,
        )
    return FramePairs([(f, f + gap) for f in range(start, stop, step)], requested=count)


def _reject_constant(name: str) -> Any:
    raise RequestJsonError(f"{name} is not a JSON number; frame indices are integers")


def loads_request_json(text: str, *, what: str, max_chars: int) -> Any:
    """``json.loads`` for request text, bounded: at most ``max_chars`` characters and
    :data:`MAX_JSON_DEPTH` levels, no ``NaN``/``Infinity``. Raises :class:`RequestJsonError`
    with a one-line message naming ``what`` (e.g. ``--pairs``)."""
    if len(text) > max_chars:
        raise RequestJsonError(f"{what} is {len(text)} characters long; the limit is {max_chars}")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RequestJsonError as error:
        raise RequestJsonError(f"{what}: {error}") from None
    except RecursionError:
        raise RequestJsonError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as error:  # JSONDecodeError, or an integer past the digit limit
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RequestJsonError(f"{what} is not valid JSON: {reason}") from None
    depth = json_depth(value, limit=MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise RequestJsonError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def json_depth(value: Any, *, limit: int) -> int:
    """Nesting depth of lists and dicts in ``value`` (a scalar is 0), without recursion; stops
    counting once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | tuple):
            children: Any = item
        elif isinstance(item, Mapping):
            children = item.values()
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def max_json_chars(max_pairs: int) -> int:
    """The size limit of request JSON text for a frame-pair limit (about 6.4 MB by default)."""
    return JSON_CHARS_PER_PAIR * max_pairs + 1024
