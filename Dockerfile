# The image of the `boundary-inference/docker` deployment (prefect.yaml): a Docker or Kubernetes
# work pool's flow runs start in it. The package and its pinned dependencies are installed, so
# the deployment has no pull step. Build from the repository root:
#   docker build -t boundary-inference:0.1.0 .
# Stores, executor and Modal's token come from the environment at run time (docs/OPERATIONS.md);
# a deployment run here never starts an embedded PostgreSQL or Redis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/boundary-inference

# Dependencies first: their layer is reused while only the code changes.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# Every package pyproject.toml's [tool.setuptools.packages.find] includes (a test checks the list).
COPY pyproject.toml README.md ./
COPY boundary_inference ./boundary_inference
COPY config ./config
COPY flows ./flows
COPY tasks ./tasks
COPY modal_app ./modal_app
COPY migrations ./migrations
RUN pip install --no-deps . && rm -rf build *.egg-info

# Not root: nothing here needs it. Flow runs work in a temporary directory of their own.
RUN useradd --create-home --uid 1000 prefect
USER prefect
WORKDIR /home/prefect
