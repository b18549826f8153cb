"""The one identifier grammar (pure, no servers): whole match, no control or invisible characters,
a length limit, the offending character named; and the stand-in recorded for a refused id."""

from __future__ import annotations

import pytest

from config.identifiers import (
    RULES,
    coerce_identifier,
    display_identifier,
    identifier_problem,
)
from tasks.validate import identifier_rejection


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: pure checks, no server (saves 10-20 s alone)."""


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("video_id", "v1"),
        ("video_id", "lecture-2026.part_3"),
        ("frames_version", "f1"),
        ("model_version", "builtin-textdiff-v1"),
        ("model_version", "ckpt:lecture+large-v1"),
        ("tenant_id", "demo"),
        ("video_id", "a" * 128),
    ],
)
def test_valid_identifiers_pass(kind: str, value: str) -> None:
    assert identifier_problem(kind, value) is None


@pytest.mark.parametrize(
    ("kind", "value", "fragment"),
    [
        # $ in re.match accepted this one: a second dedup key for the same job, billed again.
        ("frames_version", "f1\n", "U+000A (LINE FEED) at position 2"),
        ("model_version", "builtin-textdiff-v1\n", "U+000A"),
        ("video_id", "v1\r", "U+000D (CARRIAGE RETURN)"),
        ("video_id", "v\x001", "U+0000"),
        ("video_id", "v\u200b1", "U+200B (ZERO WIDTH SPACE) at position 1"),
        ("video_id", "v\u00a01", "U+00A0 (NO-BREAK SPACE)"),
        ("tenant_id", "demo\t", "U+0009 (TAB)"),
        ("tenant_id", "d\u0435mo", "U+0435 (CYRILLIC SMALL LETTER IE)"),  # a look-alike 'e'
        ("video_id", " v1", "U+0020 (SPACE) at position 0"),
        ("video_id", "-v1", "at position 0"),
        ("video_id", "../etc", "at position 0"),
        ("frames_version", "f1:x", "U+003A"),  # ':' only in model versions
        ("video_id", "", "must not be empty"),
        ("frames_version", "f" * 65, "65 characters long; the limit is 64"),
        ("video_id", "v" * 129, "the limit is 128"),
        ("video_id", 12.0, "must be a string; got float"),
        ("video_id", True, "must be a string; got bool"),
        ("video_id", None, "must be a string; got NoneType"),
        ("video_id", ["v1"], "must be a string; got list"),
    ],
)
def test_bad_identifiers_name_the_problem(kind: str, value: object, fragment: str) -> None:
    problem = identifier_problem(kind, value)
    assert problem is not None and fragment in problem
    assert "\n" not in problem  # one line, whatever the value held


def test_every_kind_has_a_rule_and_the_request_check_covers_all_four() -> None:
    assert set(RULES) == {"video_id", "frames_version", "model_version", "tenant_id"}
    ok = {"video_id": "v1", "tenant_id": "t", "frames_version": "f1", "model_version": "m1"}
    assert identifier_rejection(**ok) is None
    for kind in ok:
        rejected = identifier_rejection(**{**ok, kind: "x\n"})
        assert rejected is not None and rejected.rejection_type == "validation_failed"
        assert rejected.message.startswith(kind) and rejected.details["field"] == kind


def test_integers_become_their_decimal_string_and_nothing_else_is_coerced() -> None:
    # `prefect deployment run --param video_id=123` parses 123 as JSON: an int.
    assert coerce_identifier(123) == "123"
    assert coerce_identifier(True) is True and coerce_identifier(1.0) == 1.0
    assert coerce_identifier(-1) == -1  # '-1' would not pass anyway; left for the grammar
    assert coerce_identifier(10**200) == 10**200  # never str() past the digit limit


def test_display_identifier_is_short_printable_and_never_a_valid_id() -> None:
    deep: list = []
    cursor = deep
    for _ in range(5000):
        cursor.append([])
        cursor = cursor[0]
    for value in ["v1\n", "x" * 10_000, deep, 10**5000, "v\u200b1", b"v1", {"a": 1}]:
        shown = display_identifier(value)
        assert shown.isascii() and shown.isprintable() and len(shown) <= 80
        assert identifier_problem("video_id", shown) is not None
    assert display_identifier("v1") == "v1"


def test_sql_identifiers_are_matched_whole_in_every_adapter() -> None:
    """`^...$` with re.match accepted 'boundary_inference\\n' as a schema name."""
    from boundary_inference.ledger import PsycopgTransport, SupabaseTransport, apply_migrations

    bad = "boundary_inference\n"
    with pytest.raises(ValueError, match="identifier"):
        PsycopgTransport("postgresql://127.0.0.1:1/none", bad)
    with pytest.raises(ValueError, match="identifier"):
        SupabaseTransport(url="https://x.supabase.co", key="k", schema=bad)
    with pytest.raises(ValueError, match="identifier"):
        apply_migrations("postgresql://127.0.0.1:1/none", bad)
