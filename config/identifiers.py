"""One grammar for every identifier a request carries: video, frames version, model version, tenant.

Identifiers are dedup keys, ledger keys, Redis key parts and file names, so two spellings of one
thing must never both pass: an identifier is matched *whole* (``re.fullmatch``; ``$`` would also
match before a trailing newline), from a small ASCII alphabet, with a length limit. A refusal names
the offending character, its position and its Unicode name, because a stray ``\\n`` or a zero-width
space is invisible in a log line.
"""

from __future__ import annotations

import re
import reprlib
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class IdentifierRule:
    kind: str
    pattern: re.Pattern[str]
    max_length: int
    alphabet: str  # for the error message


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"

RULES: dict[str, IdentifierRule] = {
    "video_id": IdentifierRule(
        "video_id",
        re.compile(_NAME),
        128,
        "letters, digits, '.', '_', '-' (first a letter or digit)",
    ),
    "frames_version": IdentifierRule(
        "frames_version",
        re.compile(_NAME),
        64,
        "letters, digits, '.', '_', '-' (first a letter or digit)",
    ),
    "model_version": IdentifierRule(
        "model_version",
        re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]*"),
        128,
        "letters, digits, '.', '_', ':', '+', '-' (first a letter or digit)",
    ),
    "tenant_id": IdentifierRule(
        "tenant_id",
        re.compile(_NAME),
        64,
        "letters, digits, '.', '_', '-' (first a letter or digit)",
    ),
}


def _describe(char: str) -> str:
    name = unicodedata.name(char, None)
    if name is None:  # control characters have no name in unicodedata
        name = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB"}.get(char, "control")
    return f"U+{ord(char):04X} ({name})"


def coerce_identifier(value: object) -> object:
    """A plain integer becomes its decimal string; anything else is returned unchanged.

    ``prefect deployment run --param video_id=123`` parses its value as JSON, so an all-digit id
    arrives as an int. Its decimal string is the only spelling it can have, so accepting it adds no
    second dedup key. Booleans and floats stay as they are and are refused.
    """
    if type(value) is int and 0 <= value < 10**128:  # longer would be refused for length anyway
        return str(value)
    return value


# Every character any rule allows, and the longest limit: what can be shown as it is.
_PLAIN = re.compile(r"[A-Za-z0-9._:+-]{1,128}")
_SHOW = reprlib.Repr()
_SHOW.maxstring = 60
_SHOW.maxother = 60
_SHOW.maxlevel = 2
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = 4


def display_identifier(value: object) -> str:
    """A short, printable stand-in for ``value`` to record with a refusal (ledger row, event
    resource, artifact). A valid identifier is itself; anything else is a truncated, ASCII-escaped
    repr: never a recursion (depth-limited), never unbounded, and never equal to a valid
    identifier (it carries quotes or brackets that the grammar refuses)."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    try:
        shown = _SHOW.repr(value)
    except ValueError:  # an int past Python's 4,300-digit str limit
        shown = f"<{type(value).__name__}>"
    return shown.encode("ascii", "backslashreplace").decode("ascii")


def identifier_problem(kind: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``kind`` identifier, or None when it is.

    ``kind`` is one of :data:`RULES` (``video_id``, ``frames_version``, ``model_version``,
    ``tenant_id``).
    """
    rule = RULES[kind]
    if not isinstance(value, str):
        return f"{kind} must be a string; got {type(value).__name__}"
    if not value:
        return f"{kind} must not be empty"
    if len(value) > rule.max_length:
        return f"{kind} is {len(value)} characters long; the limit is {rule.max_length}"
    if rule.pattern.fullmatch(value):
        return None
    first_ok = rule.pattern.fullmatch(value[0]) is not None
    for position, char in enumerate(value):
        allowed = rule.pattern.fullmatch(("a" if position else "") + char) is not None
        if position == 0 and not first_ok:
            allowed = False
        if not allowed:
            return (
                f"{kind} {value[:40]!r} has {_describe(char)} at position {position};"
                f" allowed: {rule.alphabet}, at most {rule.max_length} characters"
            )
    return f"{kind} {value[:40]!r} is not valid; allowed: {rule.alphabet}"  # pragma: no cover
