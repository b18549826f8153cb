"""How good boundary predictions are against the truth: one definition of precision, recall and F1
for the inference benches and the training report."""

from __future__ import annotations

from collections.abc import Sequence


def boundary_quality(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, float | int]:
    """``precision``, ``recall``, ``f1`` and the counts behind them (``tp``, ``fp``, ``fn``).

    No predicted boundary is a precision of 1.0, no true boundary a recall of 1.0: nothing claimed
    wrongly, nothing missed.
    """
    tp = sum(1 for p, a in zip(predicted, actual, strict=True) if p and a)
    fp = sum(1 for p, a in zip(predicted, actual, strict=True) if p and not a)
    fn = sum(1 for p, a in zip(predicted, actual, strict=True) if a and not p)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
