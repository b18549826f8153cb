"""Predictions in the ledger's packed form: columns of a chunk, batches of a run.

A run's predictions are stored as chunks of parallel arrays (``migrations/..._prediction_chunks``)
and travel as columns, ``{"frame1": [...], "frame2": [...], "probability": [...],
"is_boundary": [...]}``: a quarter of the JSON of one object per pair, which matters through
PostgREST. This module converts between pairs and columns and writes a run in bounded batches,
batch ``i`` as chunk ``i``, so a retried flow rewrites the same chunks instead of adding more.

Example:
    >>> columns = pack([{"frame1": 0, "frame2": 1, "probability": 0.9, "is_boundary": True}])
    >>> columns["frame2"], unpack(columns)[0]["is_boundary"]
    ([1], True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

COLUMNS = ("frame1", "frame2", "probability", "is_boundary")
# Pairs per save_predictions call: one PostgREST request of about 100 kB of JSON, one chunk row.
DEFAULT_BATCH_PAIRS = 5000


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def pack(rows: Iterable[Any]) -> dict[str, list[Any]]:
    """Pairs (mappings, or objects such as ``PairPrediction``) -> the four columns, typed."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in rows:
        columns["frame1"].append(int(_field(row, "frame1")))
        columns["frame2"].append(int(_field(row, "frame2")))
        # Stored as real (float4): nine significant digits are all a float4 holds (a float4
        # value, as models output, round-trips exactly), half the digits of a float64's repr.
        columns["probability"].append(float(f"{float(_field(row, 'probability')):.9g}"))
        columns["is_boundary"].append(bool(_field(row, "is_boundary")))
    return columns


def unpack(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The four columns -> one ``{frame1, frame2, probability, is_boundary}`` dict per pair."""
    return [
        {"frame1": f1, "frame2": f2, "probability": p, "is_boundary": b}
        for f1, f2, p, b in zip(*(columns[name] for name in COLUMNS), strict=True)
    ]


def save_in_batches(
    ledger: Any, run_id: str, rows: Sequence[Any], *, batch_pairs: int = DEFAULT_BATCH_PAIRS
) -> int:
    """Save ``rows`` as chunks of at most ``batch_pairs`` pairs (chunk ``i`` = batch ``i``).

    Idempotent: saving the same rows again rewrites the same chunks. Returns the pairs saved.
    """
    if batch_pairs < 1:
        raise ValueError("batch_pairs must be >= 1")
    saved = 0
    for chunk, start in enumerate(range(0, len(rows), batch_pairs)):
        result = ledger.save_predictions(
            run_id=run_id, rows=rows[start : start + batch_pairs], chunk=chunk
        )
        saved += int(result["saved"])
    return saved
