"""The Modal decorator's keyword arguments, from :class:`config.Settings`: one source of truth.

:func:`function_options` is what ``modal_app.app`` passes to ``@app.cls`` and what the tests
compare with the settings. The deployed values are read back by the client's preflight
(``boundary_inference.executor.modal_deployment``): ``Function.info()`` for GPU, CPU, memory,
timeout and retries, ``Function.autoscaler.settings()`` for containers and scaledown, and the app
tags of :func:`app_tags` for the start-up timeout and abort grace Modal does not report back.

Names are Modal 1.x ones. The removed spellings (``concurrency_limit``, ``keep_warm``,
``container_idle_timeout``, ``allow_concurrent_inputs``) raise ``DeprecationError`` in modal 1.6, and
there is deliberately no ``@modal.concurrent``: one input per container, so a container's billed
seconds belong to one job and ``max_containers`` is also the number of jobs running at once.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from config import Settings

if TYPE_CHECKING:
    import modal

PYTHON_VERSION = "3.11"
# What the function imports (modal_app.frames/models/predictor + config; video sources by URI:
# S3-compatible stores, URLs, Supabase Storage: numpy, av, pydantic, pydantic-settings, boto3, httpx,
# supabase) and everything they pull in, each at its requirements.lock version: uv resolves
# nothing at build time, so the GPU image runs exactly the versions the tests ran (a test checks
# the set is closed under the packages' own requirements on Linux CPython 3.11).
IMAGE_PACKAGES = (
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "av==18.1.0",
    "boto3==1.44.8",
    "botocore==1.44.8",
    "certifi==2026.10.18",
    "cffi==2.1.1",
    "cryptography==50.0.2",
    "deprecation==2.1.0",
    "h11==0.16.0",
    "h2==4.4.1",
    "hpack==4.2.0",
    "httpcore==1.0.9",
    "httpx==0.28.1",
    "hyperframe==6.1.0",
    "idna==3.20",
    "jmespath==1.1.0",
    "multidict==7.2.1",
    "numpy==2.4.6",
    "packaging==26.3",
    "postgrest==2.34.1",
    "propcache==0.5.4",
    "pycparser==3.12",
    "pydantic==2.14.3",
    "pydantic_core==2.50.4",
    "pydantic-settings==2.16.3",
    "PyJWT==2.15.1",
    "python-dateutil==2.9.0.post0",
    "python-dotenv==1.2.4",
    "realtime==2.34.1",
    "s3transfer==0.19.3",
    "six==1.17.0",
    "storage3==2.34.1",
    "supabase==2.34.1",
    "supabase-auth==2.34.1",
    "supabase-functions==2.34.1",
    "typing_extensions==4.16.0",
    "typing-inspection==0.4.5",
    "urllib3==2.8.0",
    "websockets==15.0.1",
    "yarl==1.25.1",
)
# The torch extra, exactly requirements-torch.lock (a test keeps them equal): torch's CUDA build
# from PyPI and everything it pulls in, so the GPU runs the versions the CPU tests ran. Its own
# image layer, after the small one above.
TORCH_IMAGE_PACKAGES = (
    "accelerate==1.15.0",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "click==8.5.1",
    "cuda-bindings==13.5.0",
    "cuda-pathfinder==1.9.1",
    "cuda-toolkit==13.0.3.0",
    "filelock==4.2.12",
    "fsspec==2026.9.0",
    "h11==0.16.0",
    "hf-xet==1.8.0",
    "httpcore2==2.16.2",
    "httpx2==2.16.2",
    "huggingface_hub==2.4.0",
    "idna==3.20",
    "Jinja2==3.1.6",
    "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4",
    "mdurl==0.1.2",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "numpy==2.4.6",
    "nvidia-cublas==13.1.1.3",
    "nvidia-cuda-cupti==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cudnn-cu13==9.24.0.43",
    "nvidia-cufft==12.0.0.61",
    "nvidia-cufile==1.15.1.6",
    "nvidia-curand==10.4.0.35",
    "nvidia-cusolver==12.0.4.66",
    "nvidia-cusparse==12.6.3.3",
    "nvidia-cusparselt-cu13==0.8.1",
    "nvidia-nccl-cu13==2.30.7",
    "nvidia-nvjitlink==13.5.37",
    "nvidia-nvshmem-cu13==3.4.5",
    "nvidia-nvtx==13.0.85",
    "packaging==26.3",
    "peft==0.21.2",
    "pillow==13.0.0",
    "psutil==7.2.2",
    "pydantic==2.14.3",
    "pydantic_core==2.50.4",
    "Pygments==2.21.0",
    "PyYAML==6.0.3",
    "regex==2026.11.15",
    "rich==15.0.0",
    "safetensors==0.8.0",
    "setuptools==84.2.1",
    "shellingham==1.5.4",
    "sympy==1.14.0",
    "tokenizers==0.23.3",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "tqdm==4.70.1",
    "transformers==5.24.0",
    "triton==3.8.0",
    "truststore==0.10.5",
    "typer==0.29.2",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
)
# The container re-imports modal_app.app and so re-reads Settings (it needs the attempt cap and the
# models directory). Every setting except connections is baked into the image's environment at
# deploy time, so the running function agrees with the decorator it was deployed with and passes the
# same coherence checks. Nothing secret or connection-related is copied.
# What one job may cost on Modal is bounded by the decorator values, which the deploy records on
# the function (the client reads them back: boundary_inference.executor.modal_deployment), and by
# two values Modal does not report back, which the deploy records as app tags (setting -> tag).
DEPLOY_RECORDED_TAGS: dict[str, str] = {
    "startup_timeout_s": "bi-startup-timeout-s",
    "abort_grace_s": "bi-abort-grace-s",
}

NOT_BAKED = frozenset(
    {
        "database_url",
        "supabase_url",
        "supabase_service_role_key",
        "redis_url",
        "redis_block",
        "state_dir",
        "s3_access_key_id",
        "s3_secret_access_key",
    }
)


# Keys of the progress ``modal.Dict``, shared by the function (writer) and the executor (reader).
REFUSED = "refused"  # key of the refusal a call returns instead of a result
FAILED = "failed"  # key of the typed user failure a call returns instead of raising it


def attempts_key(run_id: str) -> str:
    return f"attempts:{run_id}"


def call_key(call_id: str) -> str:
    return f"call:{call_id}"


def fence_key(run_id: str) -> str:
    """Written by a client that gave up finding the call of a lost spawn: a call of this run that
    starts after it refuses to run (the container checks it after recording its own id)."""
    return f"fence:{run_id}"


# Modal bills apps, not calls: this tag is how boundary_inference.billing tells our spend apart.
BILLING_TAG_NAME = "project"


def app_tags(settings: Settings) -> dict[str, str]:
    """The app's tags, set by the deploy: the billing tag and the spend limits Modal's function
    metadata does not carry (tag values allow digits and periods: ``format(x, "g")``)."""
    recorded = {
        tag: format(float(getattr(settings, name)), "g")
        for name, tag in DEPLOY_RECORDED_TAGS.items()
    }
    return {BILLING_TAG_NAME: settings.modal_app_name, **recorded}


def models_mount_path(settings: Settings) -> str:
    """Where the models Volume is mounted in the container (absolute: Modal requires it)."""
    path = PurePosixPath(str(settings.models_dir).replace("\\", "/"))
    return str(path) if path.is_absolute() else f"/{path.name or 'models'}"


def models_volume_name(settings: Settings) -> str:
    return f"{settings.modal_app_name}-models"


def progress_dict_name(settings: Settings) -> str:
    """The ``modal.Dict`` holding per-run progress and attempt records."""
    return f"{settings.modal_app_name}-progress"


def baked_environment(settings: Settings) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name in NOT_BAKED or value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"BOUNDARY_INFERENCE_{name.upper()}"] = text
    env["BOUNDARY_INFERENCE_MODELS_DIR"] = models_mount_path(settings)
    return env


def extra_python_sources(settings: Settings) -> tuple[str, ...]:
    """A team's own packages (their model architectures) shipped into the image."""
    names = (s.strip() for s in settings.model_python_sources.split(","))
    return tuple(dict.fromkeys(n for n in names if n and n not in ("modal_app", "config")))


def build_image(settings: Settings) -> modal.Image:
    import modal  # here, not at the top: the flow reads names from this module, and importing
    # modal costs a submission ~0.7 CPU-s it never uses with the local executor

    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .uv_pip_install(*IMAGE_PACKAGES)
        .uv_pip_install(*TORCH_IMAGE_PACKAGES)
        .env(baked_environment(settings))
        # Last, and not copied: code changes do not rebuild the package layers.
        .add_local_python_source("modal_app", "config", *extra_python_sources(settings))
    )


def retry_policy(settings: Settings) -> modal.Retries:
    """The only retry layer around GPU work: ``1 + gpu_retries`` attempts per logical job."""
    import modal

    return modal.Retries(
        max_retries=settings.gpu_retries, backoff_coefficient=2.0, initial_delay=1.0
    )


def function_options(settings: Settings) -> dict[str, Any]:
    """Exactly the keyword arguments of ``@app.cls(...)`` for the inference class."""
    import modal

    return {
        "gpu": settings.gpu,
        # Modal bills the greater of request and use, per second: a limit equal to the request is
        # what makes the per-second price the cost guard multiplies by an upper bound. A job that
        # needs more memory is killed (a crash the attempt counter bounds), never billed more.
        "cpu": (settings.cpu_cores, settings.cpu_cores),
        "memory": (settings.memory_mib, settings.memory_mib),
        # Per attempt; the per-job deadline inside the function is the tighter bound.
        "timeout": settings.gpu_timeout_s,
        # Start-up runs before the per-job deadline's clock: without this it may take the whole
        # timeout, and the worst case (config.cost_model.CostModel.attempt_limit_s) would be a fiction.
        "startup_timeout": settings.startup_timeout_s,
        "scaledown_window": settings.scaledown_window_s,
        "max_containers": settings.max_containers,
        "retries": retry_policy(settings),
        "enable_memory_snapshot": True,
        "volumes": {
            models_mount_path(settings): modal.Volume.from_name(
                models_volume_name(settings), create_if_missing=True
            )
        },
        # Store credentials for s3:// and supabase:// videos, from a Secret named in the settings;
        # a request never carries any. No Secret is attached when none is named.
        "secrets": (
            [modal.Secret.from_name(settings.sources_secret_name)]
            if settings.sources_secret_name
            else []
        ),
        "image": build_image(settings),
    }
