"""Realistic ledger history, built in SQL with ``generate_series``: a million runs in seconds.

Used by the scale benchmark (``bench --scale``) and by the plan tests, which must see the planner's
choices on a ledger of production size, not on an empty one. Everything is one ``INSERT ... SELECT``
per table, deterministic (a multiplicative hash of the row number stands in for randomness), and
relative to ``now`` so that "today" and "this month" hold what they would in production:

* ``runs`` spread evenly over ``months`` months before ``now``, over ``tenants`` tenants, about five
  runs per video (frames and model versions vary), five model versions;
* most runs finished: 90 % succeeded, 4 % failed, 2 % timed out, 2 % cancelled, 2 % rejected; the
  newest ``live_runs`` are queued or running (minutes old, their flow's lease valid for an hour);
  every run but the rejected ones passed the limiter (``admitted_at``);
* one budget reservation per admitted run (settled, released for a cancelled run, open for a live
  one) and ``orphans`` open reservations of finished runs (what the reaper closes);
* ``rejections_per_run`` rejections per run over the same span, acknowledged when older than two
  days (so the open ones are the last two days' worth, as when operators keep up);
* one circuit-breaker event per spawned run that ended;
* packed predictions (``pairs_per_prediction_run`` pairs each) for the newest
  ``prediction_runs`` succeeded runs.

Row triggers are switched off while loading (a million NOTIFYs and per-row total updates would
take minutes) and the budget totals are rebuilt from the reservations afterwards, exactly as the
migration back-fills them. Then ``VACUUM (ANALYZE)``: the planner sees real statistics.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from boundary_inference.ledger.migrate import apply_migrations

TENANT_FORMAT = "ht-{:03d}"
MODELS = 5
BREAKER_NAME = "gpu-inference"


@dataclass(frozen=True)
class HistoryShape:
    """How much history, and how it is spread (see the module docstring)."""

    runs: int
    months: int = 24
    tenants: int = 50
    live_runs: int = 12
    orphans: int = 6
    rejections_per_run: float = 0.3
    prediction_runs: int = 200
    pairs_per_prediction_run: int = 1000

    @property
    def videos(self) -> int:
        return max(1, self.runs // 5, self.live_runs)

    @property
    def rejections(self) -> int:
        return int(self.runs * self.rejections_per_run)


def build_history(
    dsn: str,
    schema: str,
    shape: HistoryShape,
    *,
    now: dt.datetime | None = None,
    migrate: bool = True,
) -> dict[str, Any]:
    """Migrate ``schema`` (unless ``migrate=False``) and fill it with ``shape``'s history.

    The schema should be empty: runs are inserted, not merged. Returns the row counts, the
    seconds each step took, and ``now`` (the instant the history ends at).
    """
    if migrate:
        apply_migrations(dsn, schema)
    now = now or dt.datetime.now(dt.UTC)
    timings: dict[str, float] = {}
    params = {**asdict(shape), "videos": shape.videos, "rejections": shape.rejections, "now": now}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SET work_mem = '64MB'")
        conn.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(schema)))
        has_chunks = _has_table(conn, schema, "boundary_prediction_chunks")
        has_totals = _has_function(conn, schema, "budget_totals_rebuild")
        with conn.transaction():
            # No triggers while loading: foreign-key checks (a million of them, each a query) and
            # per-row NOTIFYs would take minutes; the data is consistent by construction.
            conn.execute("SET LOCAL session_replication_role = replica")
            # Secondary indexes are built once after the load: maintaining seven indexes row by
            # row made a million runs take minutes instead of seconds.
            indexes = _secondary_indexes(conn, schema)
            for name, _ in indexes:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
            steps = [
                ("videos", _VIDEOS),
                ("runs", _RUNS),
                ("reservations", _RESERVATIONS),
                ("rejections", _REJECTIONS),
                ("breaker_events", _BREAKER_EVENTS),
                ("predictions", _CHUNKS if has_chunks else _PREDICTION_ROWS),
            ]
            for name, statement in steps:
                started = time.perf_counter()
                conn.execute(statement, params)
                timings[name] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            for _, definition in indexes:
                conn.execute(definition)
            timings["indexes"] = round(time.perf_counter() - started, 2)
            conn.execute("SET LOCAL session_replication_role = origin")
            if has_totals:
                started = time.perf_counter()
                conn.execute("SELECT budget_totals_rebuild()")
                timings["budget_totals"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        for table in _tables(conn, schema):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, table)))
        timings["vacuum_analyze"] = round(time.perf_counter() - started, 2)
        counts = {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            ).fetchone()[0]  # type: ignore[index]
            for table in _tables(conn, schema)
        }
    return {"schema": schema, "now": now.isoformat(), "rows": counts, "seconds": timings}


def _has_table(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{table}",)).fetchone()
    return bool(row and row[0])


def _has_function(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %s"
        " AND pronamespace = %s::regnamespace)",
        (name, schema),
    ).fetchone()
    return bool(row and row[0])


def _secondary_indexes(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of every index that backs no constraint."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relnamespace = %s::regnamespace"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
        " ORDER BY c.relname",
        (schema,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'r'"
        " ORDER BY relname",
        (schema,),
    ).fetchall()
    return [r[0] for r in rows]


# Row i's pseudo-random draw in [0, 1000): Knuth's multiplicative hash of the row number.
_H = "(((i::bigint * 2654435761) %% 4294967296) %% 1000)"
# Run and rejection ids ordered like their creation time (as a UUIDv7 would be): the load appends
# to the primary-key index instead of splitting random pages (5x faster). Lookups by id cost the
# same either way.
_ID = (
    "(lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0')"
    " || substr(md5(i::text), 1, 20))::uuid"
)
# Seconds between two consecutive runs: the runs fill the span evenly, the newest are minutes old.
_STEP = "(%(months)s * 30 * 86400.0 / greatest(%(runs)s, 1))"

_VIDEOS = sql.SQL(
    """
INSERT INTO videos (id, tenant_id, frame_count, fps, source_uri, created_at, updated_at)
SELECT 'hv-' || lpad(v::text, 7, '0'), 'ht-' || lpad((v %% %(tenants)s)::text, 3, '0'), 30000,
       25, 's3://history/hv-' || lpad(v::text, 7, '0') || '.mp4',
       %(now)s::timestamptz - make_interval(days => %(months)s * 30),
       %(now)s::timestamptz - make_interval(days => %(months)s * 30)
FROM generate_series(0, %(videos)s - 1) AS v
"""
)

_RUNS = sql.SQL(
    f"""
INSERT INTO boundary_inference_runs
  (id, video_id, tenant_id, frames_version, model_version, status, priority, pairs,
   executor_call_id, attempts, estimated_cost_usd, worst_case_cost_usd, reserved_cost_usd,
   actual_cost_usd, gpu_seconds, pairs_per_s, error, failure_kind, created_at, started_at,
   finished_at, updated_at, admitted_at, lease_expires_at, lease_owner)
SELECT {_ID}, 'hv-' || lpad(v::text, 7, '0'),
       'ht-' || lpad((v %% %(tenants)s)::text, 3, '0'), 'f' || ((i / %(videos)s) %% 3),
       'hm-' || ((i / %(videos)s + v) %% {MODELS}),
       status, 'normal', pairs,
       CASE WHEN status NOT IN ('queued', 'rejected') THEN 'fc-h' || i END,
       CASE WHEN status IN ('queued', 'rejected') THEN 0 ELSE 1 END,
       round(worst / 4, 6), worst, CASE WHEN status <> 'rejected' THEN worst END,
       CASE WHEN status IN ('succeeded', 'failed') THEN actual
            WHEN status = 'timed_out' THEN worst END,
       CASE WHEN status IN ('succeeded', 'failed') THEN gpu_s END,
       CASE WHEN status = 'succeeded' THEN pps END,
       CASE WHEN status IN ('failed', 'timed_out') THEN 'history: ' || status END,
       CASE WHEN status = 'failed' THEN 'infrastructure'
            WHEN status = 'timed_out' THEN 'timeout' END,
       created,
       CASE WHEN status NOT IN ('queued', 'rejected') THEN created + interval '2 s' END,
       CASE WHEN status NOT IN ('queued', 'running')
            THEN created + make_interval(secs => gpu_s + 40) END,
       CASE WHEN status NOT IN ('queued', 'running')
            THEN created + make_interval(secs => gpu_s + 40) ELSE created END,
       CASE WHEN status <> 'rejected' THEN created + interval '1 s' END,
       -- Live runs are watched: their flow's lease runs an hour past the history's end.
       CASE WHEN status IN ('queued', 'running')
            THEN %(now)s::timestamptz + interval '1 hour' END,
       CASE WHEN status IN ('queued', 'running') THEN 'history-flow-' || i END
FROM (
  SELECT i, v, created, pairs, pps, round(pairs / pps, 3) AS gpu_s,
         round((pairs / pps + 330) * 1.1 / 3600, 6) AS actual,
         round(0.3 + pairs * 0.000027, 6) AS worst,
         CASE WHEN i > %(runs)s - %(live_runs)s
                THEN CASE WHEN i %% 2 = 0 THEN 'queued' ELSE 'running' END
              WHEN h < 900 THEN 'succeeded' WHEN h < 940 THEN 'failed'
              WHEN h < 960 THEN 'timed_out' WHEN h < 980 THEN 'cancelled'
              ELSE 'rejected' END AS status
  FROM (
    SELECT i, i %% %(videos)s AS v, {_H} AS h,
           CASE WHEN i > %(runs)s - %(live_runs)s
                THEN %(now)s::timestamptz - make_interval(secs => (%(runs)s - i + 1) * 30)
                ELSE %(now)s::timestamptz
                     - make_interval(secs => (%(runs)s - i + 1) * {_STEP} + 1800) END AS created,
           500 + ({_H} * 37 + i) %% 24500 AS pairs,
           (60 + i %% 80)::numeric AS pps
    FROM generate_series(1, %(runs)s) AS i
  ) g
) r
"""
)

_RESERVATIONS = sql.SQL(
    """
INSERT INTO budget_reservations
  (run_id, tenant_id, day, month, reserved_usd, actual_usd, status, created_at, settled_at,
   released_at, updated_at)
SELECT id, tenant_id, (created_at AT TIME ZONE 'UTC')::date,
       date_trunc('month', created_at AT TIME ZONE 'UTC')::date, reserved_cost_usd,
       CASE WHEN kept_open THEN NULL WHEN status IN ('succeeded', 'failed', 'timed_out')
            THEN actual_cost_usd END,
       CASE WHEN status IN ('queued', 'running') OR kept_open THEN 'reserved'
            WHEN status = 'cancelled' THEN 'released' ELSE 'settled' END,
       created_at,
       CASE WHEN NOT kept_open AND status IN ('succeeded', 'failed', 'timed_out')
            THEN finished_at END,
       CASE WHEN NOT kept_open AND status = 'cancelled' THEN finished_at END,
       coalesce(finished_at, created_at)
FROM (
  SELECT r.*, r.id IN (
           SELECT id FROM boundary_inference_runs WHERE status = 'succeeded'
           ORDER BY created_at DESC OFFSET 50 LIMIT %(orphans)s) AS kept_open
  FROM boundary_inference_runs r
  WHERE status <> 'rejected'
) x
"""
)

_REJECTIONS = sql.SQL(
    f"""
INSERT INTO boundary_inference_rejections
  (id, rejection_type, message, video_id, tenant_id, frame_count, estimated_cost_usd, details,
   created_at, acknowledged, acknowledged_at, acknowledged_by)
SELECT {_ID}, kind, 'history: ' || kind, 'hv-' || lpad(v::text, 7, '0'),
       'ht-' || lpad((v %% %(tenants)s)::text, 3, '0'),
       1000 + i %% 20000, round(0.2 + (i %% 100) / 100.0, 4), '{{}}'::jsonb, created,
       created < %(now)s::timestamptz - interval '2 days',
       CASE WHEN created < %(now)s::timestamptz - interval '2 days'
            THEN created + interval '1 hour' END,
       CASE WHEN created < %(now)s::timestamptz - interval '2 days' THEN 'ops' END
FROM (
  SELECT i, (i * 7) %% %(videos)s AS v,
         (ARRAY['cooldown', 'rate_limited', 'budget_exceeded', 'cost_exceeded',
                'validation_failed', 'queue_full', 'circuit_open'])[1 + {_H} %% 7] AS kind,
         %(now)s::timestamptz
           - make_interval(secs => (%(rejections)s - i + 1)
                                   * (%(months)s * 30 * 86400.0 / greatest(%(rejections)s, 1)))
           AS created
  FROM generate_series(1, %(rejections)s) AS i
) g
"""
)

_BREAKER_EVENTS = sql.SQL(
    f"""
INSERT INTO circuit_breaker_events (name, ok, kind, at)
SELECT '{BREAKER_NAME}', status = 'succeeded',
       CASE WHEN status = 'succeeded' THEN 'success' ELSE failure_kind END, finished_at
FROM boundary_inference_runs
WHERE status IN ('succeeded', 'failed', 'timed_out')
"""
)

# Pairs (k, k+1) with a probability that varies per run and pair; every 40th pair a boundary.
_CHUNKS = sql.SQL(
    """
INSERT INTO boundary_prediction_chunks
  (run_id, chunk, pairs, frame1, frame2, probability, is_boundary, created_at)
SELECT r.id, 0, %(pairs_per_prediction_run)s,
       ARRAY(SELECT k FROM generate_series(0, %(pairs_per_prediction_run)s - 1) k),
       ARRAY(SELECT k + 1 FROM generate_series(0, %(pairs_per_prediction_run)s - 1) k),
       ARRAY(SELECT ((abs(hashtext(r.id::text || k)) %% 1000) / 1000.0)::real
             FROM generate_series(0, %(pairs_per_prediction_run)s - 1) k),
       ARRAY(SELECT k %% 40 = 39 FROM generate_series(0, %(pairs_per_prediction_run)s - 1) k),
       r.finished_at
FROM (
  SELECT id, finished_at FROM boundary_inference_runs WHERE status = 'succeeded'
  ORDER BY created_at DESC LIMIT %(prediction_runs)s
) r
"""
)

# The same predictions, one row per pair (the layout before the packed chunks).
_PREDICTION_ROWS = sql.SQL(
    """
INSERT INTO boundary_predictions (run_id, frame1, frame2, probability, is_boundary)
SELECT r.id, k, k + 1, ((abs(hashtext(r.id::text || k)) %% 1000) / 1000.0)::real, k %% 40 = 39
FROM (
  SELECT id FROM boundary_inference_runs WHERE status = 'succeeded'
  ORDER BY created_at DESC LIMIT %(prediction_runs)s
) r, generate_series(0, %(pairs_per_prediction_run)s - 1) AS k
"""
)
