"""Prefect tasks, one module per safeguard.

Every guard reads like its sentence in the README: a name, a limit from :mod:`config`, one atomic
call to the ledger or the limiter, one rejection type. A guard *returns* a
:class:`~boundary_inference.outcome.Rejected` verdict when it refuses (a refusal is a normal
outcome, not a crash) and *raises* only when the service behind it fails, which the flow turns into
``guard_unavailable``: fail closed.
"""
