"""Run inference on the deployed Modal class; watch, cancel and reattach by ``FunctionCall`` id.

The call id (``fc-...``) is all any process needs: :meth:`ModalExecutor.poll` and
:meth:`ModalExecutor.cancel` work from a fresh instance with only the id (Modal keeps results for 7
days). Progress comes from the ``modal.Dict`` the function writes (see :mod:`modal_app.app`).

No silent fall-back: without credentials, or without the deployed app, :meth:`preflight` raises
:class:`ExecutorUnavailable` and the flow refuses the job before any quota or money is taken.

The Modal client objects are injectable (``cls_lookup``, ``function_call_from_id``,
``progress_dict``) so the tests drive this class against a test double whose signatures are checked
against the real client's.
"""

from __future__ import annotations

import logging
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import modal
import modal.exception as modal_exc

from boundary_inference.executor.base import (
    CallState,
    CallStatus,
    ExecutorFailure,
    ExecutorUnavailable,
    FailureKind,
    SpawnUncertain,
)
from boundary_inference.executor.modal_deployment import deployment_problems
from config import Settings
from modal_app.modal_config import (
    FAILED,
    REFUSED,
    attempts_key,
    call_key,
    fence_key,
    progress_dict_name,
)
from modal_app.types import InferenceRequest, InferenceResult

logger = logging.getLogger(__name__)

# Errors of our own inference code (``modal_app.errors``) that mean "took too long".
TIMEOUT_KINDS = frozenset({"deadline_exceeded", "stalled"})
# Refusals and bookkeeping failures of the function itself, and a video store that did not
# answer: the service, not the input.
INFRASTRUCTURE_KINDS = frozenset(
    {"attempts_exhausted", "attempts_unrecorded", "source_unavailable", "no_cuda"}
)
# Lookup/transport failures: nothing was spawned (at submit), or the call is merely unobservable.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    modal_exc.AuthError,
    modal_exc.NotFoundError,
    modal_exc.ConnectionError,
    modal_exc.ServiceError,
    ConnectionError,
    OSError,
)
# Answers to a spawn that mean Modal did not take the input: the app or class is missing, the
# token is refused. NOT modal.exception.ConnectionError: the client re-raises its last retry's
# OSError/asyncio timeout as that (modal/_utils/grpc_utils.py, process_exception_before_retry),
# also when an earlier try reached the server and it accepted the call.
_REFUSED_BEFORE_SENDING: tuple[type[BaseException], ...] = (
    modal_exc.NotFoundError,
    modal_exc.AuthError,
)
# Client-side trouble while polling (the API throttles, an internal gRPC error, a closed client):
# the call's own state is unknown, so it stays pending until POLL_ERROR_LIMIT_S, like a lost network.
_POLL_TRANSIENT: tuple[type[BaseException], ...] = (
    modal_exc.InternalError,
    modal_exc.ResourceExhaustedError,
    modal_exc.ClientClosed,
)
# Polls that cannot reach Modal for this long end the watch (the call is cancelled best effort;
# it is bounded by its own deadline anyway). Transient blips shorter than this are just PENDING.
POLL_ERROR_LIMIT_S = 600.0
_CANCEL_TRIES = 3


def has_credentials(
    environ: Mapping[str, str] | None = None, config_path: Path | None = None
) -> bool:
    """Whether a Modal token is configured: the env pair, or the active profile of the config file.

    Read fresh on each call (``modal.config`` reads its file once, at import).
    """
    env = os.environ if environ is None else environ
    if env.get("MODAL_TOKEN_ID") and env.get("MODAL_TOKEN_SECRET"):
        return True
    if config_path is None:
        home = env.get("HOME") or str(Path.home())
        config_path = Path(env.get("MODAL_CONFIG_PATH") or Path(home) / ".modal.toml")
    try:
        profiles = tomllib.loads(config_path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = env.get("MODAL_PROFILE") or next(
        (name for name, p in profiles.items() if isinstance(p, dict) and p.get("active") is True),
        "default",
    )
    profile = profiles.get(active)
    return isinstance(profile, dict) and bool(
        profile.get("token_id") and profile.get("token_secret")
    )


class ModalExecutor:
    """Executor on the deployed ``modal_app.app.BoundaryInference`` class (Modal 1.x)."""

    name = "modal"

    def __init__(
        self,
        settings: Settings,
        *,
        cls_lookup: Callable[..., Any] | None = None,
        function_call_from_id: Callable[[str], Any] | None = None,
        app_lookup: Callable[..., Any] | None = None,
        progress_dict: Any | None = None,
        environ: Mapping[str, str] | None = None,
        poll_error_limit_s: float = POLL_ERROR_LIMIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.app_name = settings.modal_app_name
        self.class_name = settings.modal_class_name
        self._cls_lookup = cls_lookup or modal.Cls.from_name
        self._from_id = function_call_from_id or modal.FunctionCall.from_id
        self._app_lookup = app_lookup or modal.App.lookup
        self.environment_name = settings.modal_environment_name
        self._progress = progress_dict
        self._environ = environ
        self._poll_error_limit_s = poll_error_limit_s
        self._clock = clock
        self._cls: Any | None = None
        self._run_ids: dict[str, str] = {}
        self._cancelled: set[str] = set()
        self._poll_errors_since: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ModalExecutor:
        return cls(settings, **overrides)

    # --- Progress store (the function's modal.Dict) ------------------------------------------------
    @property
    def progress_dict(self) -> Any:
        if self._progress is None:
            self._progress = modal.Dict.from_name(
                progress_dict_name(self.settings), environment_name=self.environment_name
            )
        return self._progress

    def _read(self, key: str) -> Any:
        try:
            return self.progress_dict.get(key)
        except Exception as error:  # progress is advisory: never fail a poll on it
            logger.debug("progress dict read of %s failed: %s", key, error)
            return None

    def _run_id(self, call_id: str) -> str | None:
        run_id = self._run_ids.get(call_id)
        if run_id is None:
            found = self._read(call_key(call_id))
            if isinstance(found, str):
                run_id = self._run_ids[call_id] = found
        return run_id

    def _progress_of(self, call_id: str) -> tuple[int, int]:
        run_id = self._run_id(call_id)
        entry = self._read(run_id) if run_id else None
        if isinstance(entry, dict):
            return int(entry.get("done", 0)), int(entry.get("total", 0))
        return 0, 0

    def _billed_s(self, call_id: str) -> float | None:
        """GPU seconds the function recorded over all attempts, when it could record them."""
        run_id = self._run_id(call_id)
        record = self._read(attempts_key(run_id)) if run_id else None
        if isinstance(record, dict) and record.get("billed_s") is not None:
            return float(record["billed_s"])
        return None

    def find_call(self, run_id: str) -> str | None:
        """The call id the function recorded under ``run_id`` when an attempt started (before any
        other network call of the attempt), or None: not started yet, or the Dict unreachable."""
        record = self._read(attempts_key(run_id))
        call_id = record.get("call_id") if isinstance(record, dict) else None
        if isinstance(call_id, str) and call_id:
            self._run_ids[call_id] = run_id
            return call_id
        return None

    def fence(self, run_id: str) -> str | None:
        """Write the run's fence, then look once more. The function records its id, then reads
        the fence: of a late start and this fence, one always sees the other, so a call either
        shows up here (to be watched or cancelled) or refuses to run. Raises when the fence cannot
        be written (then a late start is bounded only by its own limits, charged as the worst
        case)."""
        self.progress_dict[fence_key(run_id)] = {"fenced_at": time.time()}
        return self.find_call(run_id)

    # --- Protocol ----------------------------------------------------------------------------------
    def _lookup(self) -> Any:
        if self._cls is None:
            self._cls = self._cls_lookup(
                self.app_name, self.class_name, environment_name=self.environment_name
            )
        return self._cls

    def preflight(self) -> None:
        if not has_credentials(self._environ):
            raise ExecutorUnavailable(
                "no Modal credentials (MODAL_TOKEN_ID/MODAL_TOKEN_SECRET unset and no token in"
                " ~/.modal.toml or MODAL_CONFIG_PATH): run `modal token new` or set the token"
                " variables. Refusing instead of running anywhere else."
            )
        try:
            self._lookup().hydrate()
        except modal_exc.NotFoundError as error:
            self._cls = None
            raise ExecutorUnavailable(
                f"Modal app {self.app_name!r} class {self.class_name!r} is not deployed in this"
                f" environment: run `modal deploy modal_app/app.py` ({error})"
            ) from error
        except modal_exc.AuthError as error:
            self._cls = None
            raise ExecutorUnavailable(f"Modal rejected the credentials: {error}") from error
        except _UNREACHABLE as error:
            self._cls = None
            raise ExecutorUnavailable(f"cannot reach Modal: {error}") from error
        self._check_deployed_config()

    def _check_deployed_config(self) -> None:
        """Refuse when the deployed function may spend more per job than these settings price.

        Read from the deployment itself on every preflight (``modal_deployment``): the function's
        recorded decorator values and autoscaler, and the app's tags the deploy set.
        """
        try:
            method = self._lookup()().infer
            info = method.info(refresh=True)
            scaling = method.autoscaler.settings()
            app = self._app_lookup(self.app_name, environment_name=self.environment_name)
            tags = dict(app.get_tags())
        except _UNREACHABLE as error:
            raise ExecutorUnavailable(
                f"cannot read the deployed function's limits: {error}"
            ) from error
        problems = deployment_problems(self.settings, info, scaling, tags)
        if problems:
            raise ExecutorUnavailable(
                "the deployed Modal function allows more spend per job than the cost guard"
                " assumes (" + "; ".join(problems) + "): redeploy with these settings"
            )

    def submit(self, request: InferenceRequest) -> str:
        try:
            method = self._lookup()().infer
        except _UNREACHABLE as error:
            raise ExecutorUnavailable(f"spawn refused by Modal: {error}") from error
        try:
            call = method.spawn(request.to_dict())
        except _REFUSED_BEFORE_SENDING as error:
            raise ExecutorUnavailable(f"spawn refused by Modal: {error}") from error
        except Exception as error:
            # A timeout or UNAVAILABLE may come after Modal accepted the input: a call may run
            # under an id we never saw. Not "nothing ran": the caller keeps the worst case.
            raise SpawnUncertain(
                f"spawn outcome unknown ({type(error).__name__}: {error}); a call may be running"
            ) from error
        call_id = str(call.object_id)
        self._run_ids[call_id] = request.run_id
        return call_id

    def poll(self, call_id: str, *, timeout_s: float) -> CallStatus:
        try:
            value = self._from_id(call_id).get(timeout=timeout_s)
        except modal_exc.OutputExpiredError:
            return self._failed(
                call_id,
                FailureKind.INFRASTRUCTURE,
                f"result of {call_id} expired or was lost (Modal keeps results 7 days)",
                "OutputExpiredError",
            )
        except modal_exc.FunctionTimeoutError as error:
            return self._failed(
                call_id,
                FailureKind.TIMEOUT,
                f"Modal's hard timeout ({self.settings.gpu_timeout_s} s per attempt): {error}",
                "FunctionTimeoutError",
            )
        except (TimeoutError, modal_exc.TimeoutError):
            self._poll_errors_since.pop(call_id, None)
            done, total = self._progress_of(call_id)
            return CallStatus(CallState.PENDING, done, total)
        except modal_exc.InternalFailure as error:
            return self._failed(
                call_id,
                FailureKind.INFRASTRUCTURE,
                f"Modal internal failure: {error}",
                "InternalFailure",
            )
        except modal_exc.RemoteError as error:
            kind = (
                FailureKind.CANCELLED
                if self._was_cancelled(call_id, error)
                else FailureKind.INFRASTRUCTURE
            )
            return self._failed(call_id, kind, str(error) or "remote error", "RemoteError")
        except modal_exc.NotFoundError as error:
            return self._failed(
                call_id,
                FailureKind.INFRASTRUCTURE,
                f"unknown call {call_id}: {error}",
                "NotFoundError",
            )
        except (*_UNREACHABLE, *_POLL_TRANSIENT) as error:
            return self._unreachable(call_id, error)
        except Exception as error:  # raised by our code in the container, re-raised here
            return self._failed(
                call_id, classify(error), str(error) or type(error).__name__, type(error).__name__
            )
        self._poll_errors_since.pop(call_id, None)
        if isinstance(value, dict) and REFUSED in value:
            refused = value[REFUSED]
            return self._failed(
                call_id,
                FailureKind.INFRASTRUCTURE,
                str(refused.get("message", "refused")),
                "Fenced" if refused.get("kind") == "fenced" else "AttemptsExhausted",
                known_elapsed=False,
            )
        if isinstance(value, dict) and FAILED in value:
            # A failure that would repeat (the request itself, a deadline, a stall, out of
            # memory, a code error), returned so that Modal did not retry it: one attempt,
            # billed for the seconds it used.
            failed = value[FAILED]
            done, total = self._progress_of(call_id)
            billed = failed.get("billed_s")
            returned_kind = str(failed.get("kind") or "")
            failure = ExecutorFailure(
                classify_kind(returned_kind),
                str(failed.get("message") or returned_kind or "failed"),
                str(failed.get("error_type") or "UserInputError"),
                elapsed_s=float(billed) if billed is not None else self._billed_s(call_id),
            )
            return CallStatus(CallState.FAILED, done, total, failure=failure)
        result = InferenceResult.from_dict(value)
        pairs = len(result.predictions)
        return CallStatus(CallState.SUCCEEDED, pairs, pairs, result=result)

    def _was_cancelled(self, call_id: str, error: BaseException) -> bool:
        """A cancelled call surfaces as a bare ``RemoteError``. A fresh instance (reattached by id)
        did not see the cancel, so it also trusts the function's record: the running input got
        ``InputCancellation``, which :func:`modal_app.app.run_call` records as the attempt's end."""
        if call_id in self._cancelled:
            return True
        text = str(error).lower()
        if "cancel" in text or "terminat" in text:
            return True
        run_id = self._run_id(call_id)
        record = self._read(attempts_key(run_id)) if run_id else None
        return isinstance(record, dict) and record.get("last_error_kind") == "InputCancellation"

    def _failed(
        self,
        call_id: str,
        kind: FailureKind,
        message: str,
        error_type: str,
        *,
        known_elapsed: bool | None = None,
    ) -> CallStatus:
        done, total = self._progress_of(call_id)
        # Seconds are reported only when every attempt recorded its own end (our errors); after a
        # crash, a hard timeout or a cancel they are unknown and the flow charges its estimate.
        if known_elapsed is None:
            known_elapsed = kind is FailureKind.USER_CODE or kind is FailureKind.TIMEOUT
            known_elapsed = known_elapsed and error_type != "FunctionTimeoutError"
        elapsed = self._billed_s(call_id) if known_elapsed else None
        failure = ExecutorFailure(kind, message, error_type, elapsed_s=elapsed)
        return CallStatus(CallState.FAILED, done, total, failure=failure)

    def _unreachable(self, call_id: str, error: BaseException) -> CallStatus:
        now = self._clock()
        since = self._poll_errors_since.setdefault(call_id, now)
        if now - since < self._poll_error_limit_s:
            logger.warning("cannot reach Modal to poll %s (%s); still pending", call_id, error)
            return CallStatus(CallState.PENDING)
        self.cancel(call_id)
        return self._failed(
            call_id,
            FailureKind.INFRASTRUCTURE,
            f"Modal unreachable for {now - since:.0f} s while watching {call_id}: {error}",
            type(error).__name__,
        )

    def cancel(self, call_id: str) -> None:
        """Cancel the call (its running input gets ``InputCancellation``). Idempotent.

        Never raises: it runs in ``finally`` blocks. If Modal cannot be reached after a few tries
        the error is logged; the call still ends at its own deadline.
        """
        self._cancelled.add(call_id)
        for attempt in range(1, _CANCEL_TRIES + 1):
            try:
                # Terminate the container too: a cancelled input on a live container leaves it
                # warm for scaledown_window, billed, and a native call that ignores the
                # cancellation keeps the GPU busy. One input per container, so nothing else dies.
                self._from_id(call_id).cancel(terminate_containers=True)
                return
            except (modal_exc.NotFoundError, modal_exc.OutputExpiredError):
                return
            except Exception as error:
                if attempt == _CANCEL_TRIES:
                    logger.error(
                        "could not cancel %s (%s): it stops at its deadline", call_id, error
                    )
                    return
                time.sleep(0.2 * attempt)


def classify_kind(kind: str) -> FailureKind:
    """Failure kind of a failure the function returned, by its stable ``kind``."""
    if kind in TIMEOUT_KINDS:
        return FailureKind.TIMEOUT
    if kind in INFRASTRUCTURE_KINDS or kind == "out_of_memory":
        return FailureKind.INFRASTRUCTURE
    return FailureKind.USER_CODE


def classify(error: BaseException) -> FailureKind:
    """Failure kind of an exception raised by the function's own code."""
    kind = getattr(error, "kind", None)
    if kind in TIMEOUT_KINDS:
        return FailureKind.TIMEOUT
    if kind in INFRASTRUCTURE_KINDS or isinstance(error, MemoryError):
        return FailureKind.INFRASTRUCTURE
    if isinstance(error, modal_exc.ExecutionError):
        # The remote exception could not be rebuilt here (a class this client lacks).
        return FailureKind.INFRASTRUCTURE
    return FailureKind.USER_CODE
