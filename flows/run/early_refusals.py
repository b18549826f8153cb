"""Refusals before the guards can run: the job's services cannot be reached, the settings were
refused at start, or the parameters could not be bound. Each is recorded like any other refusal
(ledger row when the ledger is reachable, Prefect event, artifact) and nothing is spawned.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.client.schemas.objects import State
from pydantic import ValidationError

from boundary_inference.outcome import Rejected, RejectionType
from boundary_inference.services import EmbeddedNotAllowed, get_services
from config import Settings, get_settings
from config.identifiers import coerce_identifier, display_identifier
from config.settings import configuration_problems, settings_for_recording
from flows.run.job import Job


def start_job(settings: Settings, ids: dict[str, Any]) -> Job | State:
    """The job with its services connected, or the refusal when they cannot be reached."""
    # Recorded with a refusal (row, event, artifact): the id itself when valid, else a short
    # escaped stand-in, so a bad id never reaches a store or an event resource as it is.
    video_id = display_identifier(ids["video_id"])
    shown_tenant = display_identifier(ids["tenant_id"])
    recording = None
    try:
        services = get_services(settings)
    except EmbeddedNotAllowed as error:
        refusal = str(error)
        recording = _recording_ledger(settings)
    except Exception as error:
        refusal = f"cannot reach the ledger or Redis: {error}"
    else:
        return Job(services, settings, video_id, shown_tenant)
    job = Job(None, settings, video_id, shown_tenant)
    job.recording_ledger = recording
    try:
        return job.reject(Rejected(RejectionType.GUARD_UNAVAILABLE, refusal))
    finally:
        if recording is not None:
            recording.close()


def _recording_ledger(settings: Settings) -> Any | None:
    """The ledger a refused deployment run can still record in (configured, or an embedded one
    already running), else None; never starts one."""
    from boundary_inference.services import open_ledger

    try:
        return open_ledger(settings, join_only=True)
    except Exception as unreachable:
        get_run_logger().info("refusal not recorded in the ledger: %s", unreachable)
        return None


def refuse_configuration(error: ValidationError, video_id: Any, tenant_id: Any) -> State:
    """The settings were refused at start: nothing can be admitted. Record why (one line per
    problem) in the ledger, when the connection settings alone are readable."""
    problems = configuration_problems(error)
    logger = get_run_logger()
    ledger = None
    try:
        recording = settings_for_recording()
    except ValidationError as bad:
        recording = Settings.model_construct()
        logger.error("configuration refused, connection settings too: %s", bad)
    else:
        try:
            from boundary_inference.services import open_ledger

            ledger = open_ledger(recording)
        except Exception as unreachable:
            logger.error("configuration refused; the ledger is not reachable: %s", unreachable)
    tenant = "" if tenant_id is None else display_identifier(coerce_identifier(tenant_id))
    job = Job(None, recording, display_identifier(coerce_identifier(video_id)), tenant)
    job.recording_ledger = ledger
    try:
        return job.reject(
            Rejected(
                RejectionType.GUARD_UNAVAILABLE,
                "configuration refused at start, nothing can be admitted: " + "; ".join(problems),
                details={"configuration_problems": problems},
            )
        )
    finally:
        if ledger is not None:
            ledger.close()


def reject_parameters(parameters: dict[str, Any], problems: list[str]) -> State:
    """Missing or mistyped parameters: recorded like any other refusal, before any guard runs."""
    settings = get_settings()
    video_id = parameters.get("video_id")
    tenant_id = parameters.get("tenant_id")
    # Shown as given when it is a valid id, else a short escaped stand-in (never stored as is).
    job = Job(
        None,
        settings,
        "(missing)" if video_id is None else display_identifier(coerce_identifier(video_id)),
        settings.default_tenant_id
        if tenant_id is None
        else display_identifier(coerce_identifier(tenant_id)),
    )
    try:
        job.services = get_services(settings)
    except Exception as error:  # recorded as an event and an artifact still
        get_run_logger().error("cannot reach the ledger to record the rejection: %s", error)
    return job.reject(Rejected(RejectionType.VALIDATION_FAILED, "; ".join(problems)))
