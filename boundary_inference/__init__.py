"""boundary-inference: GPU batch inference that cannot run away with your money, and proves it.

The product's public surface is the flow (:mod:`flows.boundary_inference`), the CLI
(``boundary-inference``), :mod:`config` and the outcome vocabulary below. The ledger, limiter and
executors are adapters behind them.
"""

from boundary_inference.outcome import JobOutcome, OutcomeStatus, Rejected, RejectionType

__all__ = ["JobOutcome", "OutcomeStatus", "Rejected", "RejectionType"]
