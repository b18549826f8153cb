"""The start-up check that GPU work has exactly one retry layer (Modal's).

A check on Prefect objects (the spawning task, the running flow) and on the Modal class's
policy: it lives beside the tasks, not in the Modal executor, and imports Modal only when the
Modal executor is configured (a local-executor submission never pays for importing it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings


def retry_audit(
    settings: Settings, task: Any, *, flows: Sequence[Any] = (), modal_class: bool = True
) -> list[str]:
    """Problems that would stack a second retry layer on GPU work (empty: exactly one layer).

    ``task`` is the Prefect task that spawns (``tasks.execute.run_job``); ``flows`` the flows that
    call it. Retries belong to Modal alone (``gpu_retries``), because that is what the cost guard
    multiplies by; any other layer multiplies the paid worst case behind the guard's back.
    """
    problems: list[str] = []
    task_retries = int(getattr(task, "retries", 0) or 0)
    name = getattr(task, "name", repr(task))
    if task_retries > 0:
        problems.append(
            f"task {name!r} has retries={task_retries}: each retry spawns a new Modal call with"
            f" its own {settings.gpu_attempts} attempts, so a job could run"
            f" {(1 + task_retries) * settings.gpu_attempts} times, not {settings.gpu_attempts}"
        )
    for flow in flows:
        flow_retries = int(getattr(flow, "retries", 0) or 0)
        if flow_retries > 0:
            problems.append(
                f"flow {getattr(flow, 'name', flow)!r} has retries={flow_retries}: a flow retry"
                " re-enters the spawning task; GPU retries must live in Modal only"
            )
    if not modal_class:  # the local executor: no Modal policy or class is involved
        return problems
    from modal_app.modal_config import function_options

    policy = function_options(settings)["retries"]
    if policy.max_retries != settings.gpu_retries:
        problems.append(
            f"the Modal retry policy has max_retries={policy.max_retries}, settings say"
            f" gpu_retries={settings.gpu_retries}"
        )
    try:
        from modal_app.app import BoundaryInference

        deployed_retries = BoundaryInference().infer.info().max_retries or 0
    except Exception as error:
        problems.append(f"cannot read the Modal class's retry policy: {error}")
    else:
        if deployed_retries != settings.gpu_retries:
            problems.append(
                f"modal_app.app.BoundaryInference has max_retries={deployed_retries} (from the"
                f" environment it was imported with), settings say gpu_retries={settings.gpu_retries}"
            )
    return problems


def audit_running_flow(settings: Settings) -> list[str]:
    """The start-up audit, on the flow object actually running (``with_options`` included)."""
    from prefect.context import FlowRunContext

    from tasks.execute import run_job

    context = FlowRunContext.get()
    running = [context.flow] if context is not None and context.flow is not None else []
    return retry_audit(settings, run_job, flows=running, modal_class=settings.executor == "modal")
