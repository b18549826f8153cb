#!/usr/bin/env bash
# One entry point for people and CI: `./run.sh demo` runs the main job, `./run.sh test` the suite.
# It makes a virtual environment in .venv from the pinned set in requirements.lock on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed-$(sha1sum "$here/requirements.lock" "$here/pyproject.toml" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[run.sh] installing the pinned dependency set into .venv (first run only, a few minutes)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$here/requirements.lock"
  "$venv/bin/python" -m pip install -q --no-deps -e "$here"
  rm -f "$venv"/.installed-*; touch "$stamp"
fi
# The torch extra (requirements-torch.lock, several GB) goes in only for what needs it: the tests
# (which run the torch model family on the CPU), the benchmarks and `cli models train-synthetic`.
# Its own stamp: the base install above is never touched by it.
torch_stamp="$venv/.torch-$(sha1sum "$here/requirements.lock" "$here/requirements-torch.lock" | sha1sum | cut -c1-12)"
case "${1:-} ${2:-} ${3:-}" in
  "test "*|"fast "*|"bench "*|"cli models train-synthetic") need_torch=1 ;;
  *) need_torch=0 ;;
esac
if [ "$need_torch" = 1 ] && [ ! -f "$torch_stamp" ]; then
  echo "[run.sh] installing the torch extra into .venv (first run only, a few minutes)" >&2
  "$venv/bin/python" -m pip install -q -r "$here/requirements-torch.lock"
  rm -f "$venv"/.torch-*; touch "$torch_stamp"
fi
# The Supabase CLI (tests/test_supabase_cli.py runs the real `supabase db push`) goes in with the
# tests, from npm, under .venv; without npm the test fails and says so (it is never skipped).
supabase_cli_version=2.117.0
supabase_stamp="$venv/supabase-cli/.installed-$supabase_cli_version"
if [ "$need_torch" = 1 ] && [ "${1:-}" = test ] && [ ! -f "$supabase_stamp" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "[run.sh] installing the Supabase CLI $supabase_cli_version into .venv/supabase-cli (first run only)" >&2
    mkdir -p "$venv/supabase-cli"
    (cd "$venv/supabase-cli" && npm i -E --no-audit --no-fund "supabase@$supabase_cli_version" >&2)
    touch "$supabase_stamp"
  else
    echo "[run.sh] npm not found: tests/test_supabase_cli.py will fail (install Node.js and npm)" >&2
  fi
fi
# No telemetry from an offline machine; no Prefect server needed for local runs (ephemeral mode).
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
cmd="${1:-help}"; shift || true
# Runs the command and prints its wall time (the suite's budget is stated in minutes).
timed() {
  local start=$SECONDS rc=0
  "$@" || rc=$?
  echo "[run.sh] wall time: $(( (SECONDS - start) / 60 ))m $(( (SECONDS - start) % 60 ))s" >&2
  return "$rc"
}
case "$cmd" in
  demo)  exec "$venv/bin/boundary-inference" demo "$@" ;;
  # The whole suite on pytest-xdist workers: its tests mostly wait on servers and processes (the
  # load stays near 1 serially), so 3 workers pay on 2 cores. Each worker starts its own servers;
  # a module that starts a costly server of its own keeps its tests on one worker (xdist_group,
  # --dist loadgroup). With a test path (or -n/-p no:xdist/--pdb) pytest runs serially, as asked:
  # one set of servers for a file is cheaper than three.
  test)
    xdist=(-n "${BOUNDARY_INFERENCE_TEST_WORKERS:-3}" --dist loadgroup)
    for arg in "$@"; do
      case "$arg" in
        tests*|*.py|*::*|-n*|--numprocesses*|--dist*|no:xdist|--pdb|--trace) xdist=() ;;
      esac
    done
    timed "$venv/bin/python" -m pytest "${xdist[@]}" "$@" ;;
  # The lane to run while editing: tests that need no server and are not slow (tests/conftest.py).
  # Serial: it has no servers to wait on, and a worker's start-up (imports) would cost more.
  fast)  timed "$venv/bin/python" -m pytest -m unit -q "$@" ;;
  bench) exec "$venv/bin/python" -m benches "$@" ;;
  lint)  "$venv/bin/ruff" check . && "$venv/bin/ruff" format --check . && "$venv/bin/mypy" ;;
  cli)   exec "$venv/bin/boundary-inference" "$@" ;;
  *) echo "usage: ./run.sh demo|test|fast|bench|lint|cli [args...]" >&2; exit 2 ;;
esac
