"""Executors run an :class:`~modal_app.types.InferenceRequest` somewhere and report back.

``LocalExecutor`` runs the same inference code in a child process on this machine's CPU;
``ModalExecutor`` (in :mod:`boundary_inference.executor.modal`) runs it on Modal's GPUs. Both speak
the same request and result types and the same call-id based protocol, so the flow cannot tell them
apart except by cost.
"""

from boundary_inference.executor.base import (
    CallState,
    CallStatus,
    Executor,
    ExecutorFailure,
    ExecutorUnavailable,
    FailureKind,
    SpawnUncertain,
    SpawnUnconfirmed,
)
from boundary_inference.executor.local import LocalExecutor

__all__ = [
    "CallState",
    "CallStatus",
    "Executor",
    "ExecutorFailure",
    "ExecutorUnavailable",
    "FailureKind",
    "LocalExecutor",
    "SpawnUncertain",
    "SpawnUnconfirmed",
]
