"""What the deployed Modal function may spend, read from the deployment itself, against the settings.

Modal records each deploy's decorator values on the function: ``Function.info(refresh=True)`` (a
``modal.types.FunctionInfo``: GPU type and count, CPU request and limit, memory, ``timeout``,
``max_retries``) and ``Function.autoscaler.settings()`` (a ``modal.types.FunctionAutoscalerSettings``:
``max_containers``, ``scaledown_window``, ``min_containers``, ``buffer_containers``, including any
``update_autoscaler`` override made after the deploy). Both are fresh server reads on every
preflight, so a redeploy (tighter or looser) is seen by the next job: nothing can go stale.

Two values the SDK does not report back are recorded by the deploy in the app's tags
(``modal_app.modal_config.app_tags``, read with ``App.get_tags()``): ``startup_timeout_s``
(``FunctionInfo.startup_timeout`` in modal 1.6.4 is the *web server's* start-up timeout, not the
function's) and ``abort_grace_s`` (ours, not Modal's). A tag that is missing refuses: a deployment
older than this check must be redeployed.

The comparison is in full: every value that bounds what one job costs, and the GPU type, whose
per-second price every estimate multiplies by, must be the configured one (the GPU exactly; the
others no looser).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import Settings
from modal_app.modal_config import DEPLOY_RECORDED_TAGS


def _limit(value: Any) -> float | None:
    """The upper bound of a ``(request, limit)`` pair or a bare value; ``None`` for none."""
    if isinstance(value, tuple):
        return float(value[1])
    return None if value is None else float(value)


def deployment_problems(
    settings: Settings, info: Any, scaling: Any, tags: Mapping[str, str]
) -> list[str]:
    """Each way the deployment may spend more per job than ``settings`` price (empty: none).

    Args:
        info: the deployed function's ``modal.types.FunctionInfo``.
        scaling: its ``modal.types.FunctionAutoscalerSettings``.
        tags: the deployed app's tags (``App.get_tags()``).
    """
    found: list[str] = []
    gpus = [(str(kind).upper(), int(count)) for kind, count in info.gpus]
    if gpus != [(settings.gpu.upper(), 1)]:
        found.append(f"gpu: deployed {gpus or 'none'} != configured [{settings.gpu!r} x 1]")

    def looser(name: str, deployed: float | None, configured: float, *, unbounded: str) -> None:
        if deployed is None:
            found.append(f"{name}: deployed {unbounded}, configured {configured:g}")
        elif deployed > configured:
            found.append(f"{name}: deployed {deployed:g} > configured {configured:g}")

    looser("gpu_timeout_s", float(info.timeout), settings.gpu_timeout_s, unbounded="none")
    looser("gpu_retries", float(info.max_retries or 0), settings.gpu_retries, unbounded="none")
    # A CPU request without a limit is billed for what it uses, above the priced cores.
    cpu = info.cpu if isinstance(info.cpu, tuple) else None
    looser("cpu_cores", _limit(cpu), settings.cpu_cores, unbounded="without a limit")
    # modal 1.6.4 reports the memory limit when one is set, else the request (types.py, its own
    # todo): a request without a limit cannot be told apart here; function_options always sets one.
    looser("memory_mib", _limit(info.memory_mib), settings.memory_mib, unbounded="without a limit")
    max_containers = scaling.max_containers or None  # Modal answers 0 for "no limit"
    looser("max_containers", max_containers, settings.max_containers, unbounded="unbounded")
    if scaling.scaledown_window is not None:
        looser(
            "scaledown_window_s",
            float(scaling.scaledown_window),
            settings.scaledown_window_s,
            unbounded="none",
        )
    for name in ("min_containers", "buffer_containers"):
        warm = getattr(scaling, name) or 0
        if warm > 0:
            found.append(f"{name}: deployed {warm} > 0 (containers billed while idle)")
    for name, tag in DEPLOY_RECORDED_TAGS.items():
        recorded = tags.get(tag)
        if recorded is None:
            found.append(f"{name}: not recorded by the deploy (app tag {tag!r} missing)")
            continue
        looser(name, float(recorded), float(getattr(settings, name)), unbounded="none")
    return found
