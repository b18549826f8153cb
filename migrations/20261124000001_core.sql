-- Ledger core: tables, atomic guard functions, row-level security.
--
-- The schema name is written literally as boundary_inference. The project's runner
-- (boundary_inference.ledger.migrate) applies this file to another configured schema by replacing
-- that identifier token, and only that token: names that merely start with it
-- (boundary_inference_runs, the NOTIFY channel 'boundary_inference_rejections') stay as written.
-- Applied unchanged by the Supabase CLI, it creates the schema boundary_inference.
--
-- Every state change a safeguard depends on is ONE function below; each returns jsonb, takes
-- parameters named p_*, and where time matters takes p_now (default now()) so tests can move the
-- clock. Custom SQLSTATEs: BI400 bad argument, BI403 tenant mismatch, BI404 unknown run/video,
-- BI409 illegal state transition.

CREATE SCHEMA IF NOT EXISTS boundary_inference;

-- Roles exist in Supabase; create them locally. Several processes may migrate at once, so a
-- concurrent creator's duplicate is not an error.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    -- Supabase's service_role bypasses RLS; do the same locally.
    CREATE ROLE service_role NOLOGIN BYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS boundary_inference.videos (
  id          text PRIMARY KEY,
  tenant_id   text NOT NULL,
  frame_count integer NOT NULL CHECK (frame_count > 0),
  fps         real NOT NULL CHECK (fps > 0),
  source_uri  text,
  crop_box    jsonb CHECK (
    crop_box IS NULL OR (
      jsonb_typeof(crop_box) = 'object'
      AND crop_box ?& ARRAY['x', 'y', 'width', 'height']
    )
  ),
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS videos_tenant_idx ON boundary_inference.videos (tenant_id);

CREATE TABLE IF NOT EXISTS boundary_inference.boundary_inference_runs (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  video_id            text NOT NULL REFERENCES boundary_inference.videos (id),
  tenant_id           text NOT NULL,
  frames_version      text NOT NULL,
  model_version       text NOT NULL,
  status              text NOT NULL DEFAULT 'queued' CHECK (status IN (
                        'queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out',
                        'rejected')),
  priority            text NOT NULL DEFAULT 'normal',
  pairs               integer CHECK (pairs IS NULL OR pairs >= 0),
  executor_call_id    text,
  attempts            integer NOT NULL DEFAULT 0,
  estimated_cost_usd  numeric,
  worst_case_cost_usd numeric,
  reserved_cost_usd   numeric,
  actual_cost_usd     numeric,
  gpu_seconds         numeric,
  pairs_per_s         numeric,
  error               text,
  failure_kind        text,
  rerun_of            uuid REFERENCES boundary_inference.boundary_inference_runs (id),
  flow_run_id         text,
  created_at          timestamptz NOT NULL DEFAULT now(),
  started_at          timestamptz,
  finished_at         timestamptz,
  updated_at          timestamptz NOT NULL DEFAULT now()
);
-- One live run per (video, frames, model): the backstop behind claim_run's advisory lock.
CREATE UNIQUE INDEX IF NOT EXISTS boundary_inference_runs_one_live
  ON boundary_inference.boundary_inference_runs (video_id, frames_version, model_version)
  WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS boundary_inference_runs_key_idx
  ON boundary_inference.boundary_inference_runs (video_id, frames_version, model_version, status);
CREATE INDEX IF NOT EXISTS boundary_inference_runs_created_idx
  ON boundary_inference.boundary_inference_runs (created_at DESC);
CREATE INDEX IF NOT EXISTS boundary_inference_runs_model_done_idx
  ON boundary_inference.boundary_inference_runs (model_version, finished_at DESC)
  WHERE status = 'succeeded';
CREATE INDEX IF NOT EXISTS boundary_inference_runs_tenant_idx
  ON boundary_inference.boundary_inference_runs (tenant_id);

CREATE TABLE IF NOT EXISTS boundary_inference.boundary_inference_rejections (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  rejection_type     text NOT NULL,
  message            text NOT NULL,
  video_id           text,
  tenant_id          text,
  frame_count        integer,
  estimated_cost_usd numeric,
  run_id             uuid,
  details            jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at         timestamptz NOT NULL DEFAULT now(),
  acknowledged       boolean NOT NULL DEFAULT false,
  acknowledged_at    timestamptz,
  acknowledged_by    text
);
CREATE INDEX IF NOT EXISTS boundary_inference_rejections_created_idx
  ON boundary_inference.boundary_inference_rejections (created_at DESC);
CREATE INDEX IF NOT EXISTS boundary_inference_rejections_open_idx
  ON boundary_inference.boundary_inference_rejections (created_at DESC)
  WHERE NOT acknowledged;

CREATE TABLE IF NOT EXISTS boundary_inference.boundary_predictions (
  run_id      uuid NOT NULL
              REFERENCES boundary_inference.boundary_inference_runs (id) ON DELETE CASCADE,
  frame1      integer NOT NULL,
  frame2      integer NOT NULL,
  probability real NOT NULL,
  is_boundary boolean NOT NULL,
  PRIMARY KEY (run_id, frame1, frame2)
);

CREATE TABLE IF NOT EXISTS boundary_inference.circuit_breakers (
  name             text PRIMARY KEY,
  state            text NOT NULL DEFAULT 'closed'
                   CHECK (state IN ('closed', 'open', 'half_open')),
  opened_at        timestamptz,
  closed_at        timestamptz,
  probe_granted_at timestamptz,
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS boundary_inference.circuit_breaker_events (
  id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  ok   boolean NOT NULL,
  kind text,
  at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS circuit_breaker_events_name_at_idx
  ON boundary_inference.circuit_breaker_events (name, at DESC);

CREATE TABLE IF NOT EXISTS boundary_inference.budget_reservations (
  run_id       uuid PRIMARY KEY,
  tenant_id    text NOT NULL,
  day          date NOT NULL,  -- UTC day of the reservation
  month        date NOT NULL CHECK (extract(day FROM month) = 1),  -- UTC, first of month
  reserved_usd numeric NOT NULL CHECK (reserved_usd >= 0),
  actual_usd   numeric CHECK (actual_usd IS NULL OR actual_usd >= 0),
  status       text NOT NULL DEFAULT 'reserved'
               CHECK (status IN ('reserved', 'settled', 'released')),
  created_at   timestamptz NOT NULL DEFAULT now(),
  settled_at   timestamptz,
  released_at  timestamptz,
  updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS budget_reservations_day_idx
  ON boundary_inference.budget_reservations (day, tenant_id);
CREATE INDEX IF NOT EXISTS budget_reservations_month_idx
  ON boundary_inference.budget_reservations (month, tenant_id);

-- ---------------------------------------------------------------------------------------------
-- Videos
-- ---------------------------------------------------------------------------------------------

-- Insert or update a video. Guarantee: a video id belongs to one tenant forever (BI403 otherwise).
CREATE OR REPLACE FUNCTION boundary_inference.upsert_video(
  p_id text,
  p_tenant_id text,
  p_frame_count integer,
  p_fps real,
  p_source_uri text DEFAULT NULL,
  p_crop_box jsonb DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v videos;
BEGIN
  INSERT INTO videos AS t (id, tenant_id, frame_count, fps, source_uri, crop_box)
  VALUES (p_id, p_tenant_id, p_frame_count, p_fps, p_source_uri, p_crop_box)
  ON CONFLICT (id) DO UPDATE
    SET frame_count = EXCLUDED.frame_count,
        fps = EXCLUDED.fps,
        source_uri = EXCLUDED.source_uri,
        crop_box = EXCLUDED.crop_box,
        updated_at = now()
    WHERE t.tenant_id = EXCLUDED.tenant_id
  RETURNING * INTO v;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'video % belongs to another tenant', p_id USING ERRCODE = 'BI403';
  END IF;
  RETURN to_jsonb(v);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.get_video(p_id text)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$ SELECT to_jsonb(v) FROM videos v WHERE v.id = p_id $$;

-- ---------------------------------------------------------------------------------------------
-- Runs
-- ---------------------------------------------------------------------------------------------

-- Insert-or-get the run for (video, frames_version, model_version). Guarantee: however many
-- callers race, at most one live (queued/running) run exists per key and exactly one caller sees
-- created=true for it. A live run is returned even with p_force; a succeeded run is returned
-- unless p_force, which creates a rerun pointing at it.
CREATE OR REPLACE FUNCTION boundary_inference.claim_run(
  p_video_id text,
  p_tenant_id text,
  p_frames_version text,
  p_model_version text,
  p_pairs integer DEFAULT NULL,
  p_priority text DEFAULT 'normal',
  p_force boolean DEFAULT false,
  p_flow_run_id text DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
  v_tenant text;
  v_prev uuid;
BEGIN
  -- Serializes claimers of one key (a hash collision only serializes two keys needlessly).
  PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws(chr(31),
    'boundary_inference.claim_run', p_video_id, p_frames_version, p_model_version), 0));

  SELECT tenant_id INTO v_tenant FROM videos WHERE id = p_video_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown video %', p_video_id USING ERRCODE = 'BI404';
  END IF;
  IF v_tenant IS DISTINCT FROM p_tenant_id THEN
    RAISE EXCEPTION 'video % belongs to another tenant', p_video_id USING ERRCODE = 'BI403';
  END IF;

  SELECT * INTO r FROM boundary_inference_runs
   WHERE video_id = p_video_id AND frames_version = p_frames_version
     AND model_version = p_model_version AND status IN ('queued', 'running')
   ORDER BY created_at DESC LIMIT 1;
  IF FOUND THEN
    RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                              'rerun_of', r.rerun_of);
  END IF;

  SELECT * INTO r FROM boundary_inference_runs
   WHERE video_id = p_video_id AND frames_version = p_frames_version
     AND model_version = p_model_version AND status = 'succeeded'
   ORDER BY finished_at DESC NULLS LAST, created_at DESC LIMIT 1;
  IF FOUND THEN
    IF NOT coalesce(p_force, false) THEN
      RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                                'rerun_of', r.rerun_of);
    END IF;
    v_prev := r.id;
  END IF;

  INSERT INTO boundary_inference_runs AS t
    (video_id, tenant_id, frames_version, model_version, status, priority, pairs, rerun_of,
     flow_run_id)
  VALUES (p_video_id, p_tenant_id, p_frames_version, p_model_version, 'queued',
          coalesce(p_priority, 'normal'), p_pairs, v_prev, p_flow_run_id)
  ON CONFLICT (video_id, frames_version, model_version) WHERE status IN ('queued', 'running')
  DO NOTHING
  RETURNING * INTO r;
  IF FOUND THEN
    RETURN jsonb_build_object('run_id', r.id, 'created', true, 'status', r.status,
                              'rerun_of', r.rerun_of);
  END IF;

  -- Only reachable if a writer bypassed the advisory lock: the unique index still holds.
  SELECT * INTO r FROM boundary_inference_runs
   WHERE video_id = p_video_id AND frames_version = p_frames_version
     AND model_version = p_model_version AND status IN ('queued', 'running');
  RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                            'rerun_of', r.rerun_of);
END $$;

-- Move a run along its state machine. Guarantee: only the legal edges
--   queued  -> running | rejected | cancelled | failed
--   running -> succeeded | failed | cancelled | timed_out
-- ever happen (row lock; BI409 otherwise, BI404 for an unknown run); terminal states are final.
CREATE OR REPLACE FUNCTION boundary_inference.transition_run(
  p_run_id uuid,
  p_to_status text,
  p_fields jsonb DEFAULT '{}'::jsonb,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
  f jsonb := coalesce(p_fields, '{}'::jsonb);
  v_unknown text[];
BEGIN
  IF jsonb_typeof(f) <> 'object' THEN
    RAISE EXCEPTION 'p_fields must be a JSON object' USING ERRCODE = 'BI400';
  END IF;
  SELECT array_agg(k ORDER BY k) INTO v_unknown FROM jsonb_object_keys(f) AS k
   WHERE k NOT IN ('executor_call_id', 'attempts', 'estimated_cost_usd', 'worst_case_cost_usd',
                   'reserved_cost_usd', 'actual_cost_usd', 'gpu_seconds', 'pairs_per_s',
                   'error', 'failure_kind');
  IF v_unknown IS NOT NULL THEN
    RAISE EXCEPTION 'p_fields has unknown keys: %', array_to_string(v_unknown, ', ')
      USING ERRCODE = 'BI400';
  END IF;

  SELECT * INTO r FROM boundary_inference_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;
  IF NOT (
       (r.status = 'queued' AND p_to_status IN ('running', 'rejected', 'cancelled', 'failed'))
    OR (r.status = 'running' AND p_to_status IN ('succeeded', 'failed', 'cancelled', 'timed_out'))
  ) THEN
    RAISE EXCEPTION 'illegal transition % -> % for run %', r.status, p_to_status, p_run_id
      USING ERRCODE = 'BI409';
  END IF;

  UPDATE boundary_inference_runs SET
    status = p_to_status,
    executor_call_id = coalesce(f ->> 'executor_call_id', executor_call_id),
    attempts = coalesce((f ->> 'attempts')::integer, attempts),
    estimated_cost_usd = coalesce((f ->> 'estimated_cost_usd')::numeric, estimated_cost_usd),
    worst_case_cost_usd = coalesce((f ->> 'worst_case_cost_usd')::numeric, worst_case_cost_usd),
    reserved_cost_usd = coalesce((f ->> 'reserved_cost_usd')::numeric, reserved_cost_usd),
    actual_cost_usd = coalesce((f ->> 'actual_cost_usd')::numeric, actual_cost_usd),
    gpu_seconds = coalesce((f ->> 'gpu_seconds')::numeric, gpu_seconds),
    pairs_per_s = coalesce((f ->> 'pairs_per_s')::numeric, pairs_per_s),
    error = coalesce(f ->> 'error', error),
    failure_kind = coalesce(f ->> 'failure_kind', failure_kind),
    started_at = CASE WHEN p_to_status = 'running' THEN coalesce(started_at, p_now)
                      ELSE started_at END,
    finished_at = CASE WHEN p_to_status = 'running' THEN finished_at ELSE p_now END,
    updated_at = p_now
  WHERE id = p_run_id
  RETURNING * INTO r;
  RETURN to_jsonb(r);
END $$;

-- Record the executor's call id. Guarantee: only a live run (queued/running) can get one (BI409).
CREATE OR REPLACE FUNCTION boundary_inference.set_call_id(p_run_id uuid, p_call_id text)
RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
BEGIN
  SELECT * INTO r FROM boundary_inference_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;
  IF r.status NOT IN ('queued', 'running') THEN
    RAISE EXCEPTION 'run % is %: no call id can be set', p_run_id, r.status
      USING ERRCODE = 'BI409';
  END IF;
  UPDATE boundary_inference_runs SET executor_call_id = p_call_id, updated_at = now()
   WHERE id = p_run_id RETURNING * INTO r;
  RETURN to_jsonb(r);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.get_run(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$ SELECT to_jsonb(r) FROM boundary_inference_runs r WHERE r.id = p_run_id $$;

CREATE OR REPLACE FUNCTION boundary_inference.list_runs(
  p_limit integer DEFAULT 50,
  p_video_id text DEFAULT NULL,
  p_status text DEFAULT NULL
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.created_at DESC, r.id), '[]'::jsonb)
  FROM (
    SELECT * FROM boundary_inference_runs
     WHERE (p_video_id IS NULL OR video_id = p_video_id)
       AND (p_status IS NULL OR status = p_status)
     ORDER BY created_at DESC, id
     LIMIT greatest(coalesce(p_limit, 50), 0)
  ) r
$$;

-- Live runs right now (the queue-depth guard's number).
CREATE OR REPLACE FUNCTION boundary_inference.queue_depth()
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT jsonb_build_object(
    'queued', count(*) FILTER (WHERE status = 'queued'),
    'running', count(*) FILTER (WHERE status = 'running'),
    'total', count(*))
  FROM boundary_inference_runs WHERE status IN ('queued', 'running')
$$;

-- Average throughput of the last p_runs succeeded runs of a model (calibrates the estimate).
CREATE OR REPLACE FUNCTION boundary_inference.recent_throughput(
  p_model_version text,
  p_runs integer DEFAULT 20
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT jsonb_build_object('pairs_per_s', avg(pairs_per_s), 'runs', count(*))
  FROM (
    SELECT pairs_per_s FROM boundary_inference_runs
     WHERE model_version = p_model_version AND status = 'succeeded'
       AND pairs_per_s IS NOT NULL AND pairs_per_s > 0
     ORDER BY finished_at DESC NULLS LAST, created_at DESC
     LIMIT greatest(coalesce(p_runs, 20), 0)
  ) recent
$$;

-- ---------------------------------------------------------------------------------------------
-- Budget
-- ---------------------------------------------------------------------------------------------

-- Committed spend: open reservations at their reserved amount, settled ones at their actual cost.
CREATE OR REPLACE FUNCTION boundary_inference._committed(
  p_day date, p_month date, p_tenant_id text
) RETURNS TABLE (daily numeric, monthly numeric, daily_actual numeric, monthly_actual numeric)
LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT
    coalesce(sum(CASE status WHEN 'reserved' THEN reserved_usd
                             WHEN 'settled' THEN coalesce(actual_usd, 0) ELSE 0 END)
             FILTER (WHERE day = p_day), 0),
    coalesce(sum(CASE status WHEN 'reserved' THEN reserved_usd
                             WHEN 'settled' THEN coalesce(actual_usd, 0) ELSE 0 END), 0),
    coalesce(sum(coalesce(actual_usd, 0)) FILTER (WHERE day = p_day AND status = 'settled'), 0),
    coalesce(sum(coalesce(actual_usd, 0)) FILTER (WHERE status = 'settled'), 0)
  FROM budget_reservations
  WHERE month = p_month AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
$$;

-- Reserve p_amount_usd for a run. Guarantee: all reservations are serialized by one transaction
-- advisory lock, so committed spend never exceeds any cap, however many callers race (100 x $0.50
-- against $20 gives exactly 40). Idempotent per run: a run that already holds a reservation (or
-- settled one) gets ok=true again without a second charge.
CREATE OR REPLACE FUNCTION boundary_inference.reserve_budget(
  p_run_id uuid,
  p_tenant_id text,
  p_amount_usd numeric,
  p_daily_cap_usd numeric,
  p_monthly_cap_usd numeric,
  p_tenant_daily_cap_usd numeric DEFAULT NULL,
  p_tenant_monthly_cap_usd numeric DEFAULT NULL,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_day date := (p_now AT TIME ZONE 'UTC')::date;
  v_month date := date_trunc('month', p_now AT TIME ZONE 'UTC')::date;
  v_existing budget_reservations;
  g record;
  t record;
  v_reason text;
BEGIN
  IF p_amount_usd IS NULL OR p_amount_usd < 0 THEN
    RAISE EXCEPTION 'p_amount_usd must be >= 0' USING ERRCODE = 'BI400';
  END IF;
  -- One lock for all reservations: the global caps make every reservation contend anyway.
  PERFORM pg_advisory_xact_lock(hashtextextended('boundary_inference.budget', 0));

  SELECT * INTO v_existing FROM budget_reservations WHERE run_id = p_run_id;
  IF FOUND AND v_existing.status IN ('reserved', 'settled') THEN
    SELECT * INTO g FROM _committed(v_existing.day, v_existing.month, NULL);
    RETURN jsonb_build_object(
      'ok', true, 'reason', NULL, 'idempotent', true,
      'reserved_usd', v_existing.reserved_usd,
      'daily_committed_usd', g.daily, 'monthly_committed_usd', g.monthly);
  END IF;

  SELECT * INTO g FROM _committed(v_day, v_month, NULL);
  SELECT * INTO t FROM _committed(v_day, v_month, p_tenant_id);
  IF g.daily + p_amount_usd > p_daily_cap_usd THEN
    v_reason := 'daily_cap';
  ELSIF g.monthly + p_amount_usd > p_monthly_cap_usd THEN
    v_reason := 'monthly_cap';
  ELSIF p_tenant_daily_cap_usd IS NOT NULL AND t.daily + p_amount_usd > p_tenant_daily_cap_usd THEN
    v_reason := 'tenant_daily_cap';
  ELSIF p_tenant_monthly_cap_usd IS NOT NULL
        AND t.monthly + p_amount_usd > p_tenant_monthly_cap_usd THEN
    v_reason := 'tenant_monthly_cap';
  END IF;

  IF v_reason IS NOT NULL THEN
    RETURN jsonb_build_object(
      'ok', false, 'reason', v_reason, 'idempotent', false, 'reserved_usd', 0,
      'daily_committed_usd', g.daily, 'monthly_committed_usd', g.monthly,
      'tenant_daily_committed_usd', t.daily, 'tenant_monthly_committed_usd', t.monthly);
  END IF;

  -- A released reservation may be taken again (a retried admission).
  INSERT INTO budget_reservations AS b
    (run_id, tenant_id, day, month, reserved_usd, status, created_at, updated_at)
  VALUES (p_run_id, p_tenant_id, v_day, v_month, p_amount_usd, 'reserved', p_now, p_now)
  ON CONFLICT (run_id) DO UPDATE
    SET tenant_id = EXCLUDED.tenant_id, day = EXCLUDED.day, month = EXCLUDED.month,
        reserved_usd = EXCLUDED.reserved_usd, actual_usd = NULL, status = 'reserved',
        released_at = NULL, updated_at = EXCLUDED.updated_at;

  RETURN jsonb_build_object(
    'ok', true, 'reason', NULL, 'idempotent', false, 'reserved_usd', p_amount_usd,
    'daily_committed_usd', g.daily + p_amount_usd,
    'monthly_committed_usd', g.monthly + p_amount_usd,
    'tenant_daily_committed_usd', t.daily + p_amount_usd,
    'tenant_monthly_committed_usd', t.monthly + p_amount_usd);
END $$;

-- Replace a reservation by what the run really cost (the unused part is freed). Guarantee: the
-- run's committed amount becomes exactly p_actual_usd; repeatable (the last actual wins).
CREATE OR REPLACE FUNCTION boundary_inference.settle_budget(
  p_run_id uuid,
  p_actual_usd numeric,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  b budget_reservations;
BEGIN
  IF p_actual_usd IS NULL OR p_actual_usd < 0 THEN
    RAISE EXCEPTION 'p_actual_usd must be >= 0' USING ERRCODE = 'BI400';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended('boundary_inference.budget', 0));
  UPDATE budget_reservations
     SET status = 'settled', actual_usd = p_actual_usd, settled_at = p_now, updated_at = p_now
   WHERE run_id = p_run_id
  RETURNING * INTO b;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('settled', false, 'run_id', p_run_id, 'status', NULL);
  END IF;
  RETURN jsonb_build_object('settled', true, 'run_id', b.run_id, 'status', b.status,
                            'reserved_usd', b.reserved_usd, 'actual_usd', b.actual_usd,
                            'freed_usd', greatest(b.reserved_usd - b.actual_usd, 0));
END $$;

-- Give a reservation back (the job never ran). Guarantee: only an open reservation is released;
-- a settled one keeps its actual cost.
CREATE OR REPLACE FUNCTION boundary_inference.release_budget(
  p_run_id uuid,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  b budget_reservations;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('boundary_inference.budget', 0));
  UPDATE budget_reservations
     SET status = 'released', released_at = p_now, updated_at = p_now
   WHERE run_id = p_run_id AND status = 'reserved'
  RETURNING * INTO b;
  IF FOUND THEN
    RETURN jsonb_build_object('released', true, 'run_id', p_run_id, 'status', b.status,
                              'freed_usd', b.reserved_usd);
  END IF;
  SELECT * INTO b FROM budget_reservations WHERE run_id = p_run_id;
  RETURN jsonb_build_object('released', false, 'run_id', p_run_id, 'status', b.status,
                            'freed_usd', 0);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.spend_summary(
  p_tenant_id text DEFAULT NULL,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_day date := (p_now AT TIME ZONE 'UTC')::date;
  v_month date := date_trunc('month', p_now AT TIME ZONE 'UTC')::date;
  c record;
BEGIN
  SELECT * INTO c FROM _committed(v_day, v_month, p_tenant_id);
  RETURN jsonb_build_object(
    'tenant_id', p_tenant_id, 'day', v_day, 'month', v_month,
    'daily_committed_usd', c.daily, 'monthly_committed_usd', c.monthly,
    'daily_actual_usd', c.daily_actual, 'monthly_actual_usd', c.monthly_actual);
END $$;

-- One row per UTC day, oldest first, the last p_days days up to today (days without spend: 0).
CREATE OR REPLACE FUNCTION boundary_inference.spend_by_day(
  p_days integer DEFAULT 30,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  WITH days AS (
    SELECT d::date AS day
    FROM generate_series((p_now AT TIME ZONE 'UTC')::date - (greatest(p_days, 1) - 1),
                         (p_now AT TIME ZONE 'UTC')::date, interval '1 day') AS d
  )
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'day', days.day,
           'committed_usd', coalesce(s.committed, 0),
           'actual_usd', coalesce(s.actual, 0),
           'reservations', coalesce(s.n, 0)) ORDER BY days.day), '[]'::jsonb)
  FROM days
  LEFT JOIN (
    SELECT day,
           sum(CASE status WHEN 'reserved' THEN reserved_usd
                           WHEN 'settled' THEN coalesce(actual_usd, 0) ELSE 0 END) AS committed,
           sum(coalesce(actual_usd, 0)) FILTER (WHERE status = 'settled') AS actual,
           count(*) AS n
    FROM budget_reservations GROUP BY day
  ) s ON s.day = days.day
$$;

-- ---------------------------------------------------------------------------------------------
-- Circuit breaker
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION boundary_inference._breaker_failures(
  p_name text, p_window_s numeric, p_now timestamptz, p_closed_at timestamptz
) RETURNS integer LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT count(*)::integer FROM circuit_breaker_events
   WHERE name = p_name AND NOT ok
     AND at > p_now - make_interval(secs => p_window_s)
     AND at <= p_now
     AND (p_closed_at IS NULL OR at > p_closed_at)
$$;

-- May a job go to the executor? closed: yes. open: no, until p_open_s have passed; then, with
-- p_acquire_probe, exactly ONE caller (row lock) moves it to half_open and gets probe=true.
-- half_open: no while the probe is out, unless it was granted p_open_s ago (lost) -> new probe.
-- With p_acquire_probe=false this is a pure read.
CREATE OR REPLACE FUNCTION boundary_inference.breaker_check(
  p_name text,
  p_threshold integer,
  p_window_s numeric,
  p_open_s numeric,
  p_acquire_probe boolean DEFAULT true,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  s circuit_breakers;
  v_elapsed numeric;
BEGIN
  IF coalesce(p_acquire_probe, false) THEN
    SELECT * INTO s FROM circuit_breakers WHERE name = p_name FOR UPDATE;
  ELSE
    SELECT * INTO s FROM circuit_breakers WHERE name = p_name;
  END IF;
  IF NOT FOUND OR s.state = 'closed' THEN
    RETURN jsonb_build_object('allowed', true, 'state', 'closed', 'retry_after_s', NULL,
                              'probe', false);
  END IF;

  IF s.state = 'open' THEN
    v_elapsed := extract(epoch FROM p_now - s.opened_at);
  ELSE
    v_elapsed := extract(epoch FROM p_now - coalesce(s.probe_granted_at, s.opened_at));
  END IF;

  IF v_elapsed >= p_open_s AND coalesce(p_acquire_probe, false) THEN
    UPDATE circuit_breakers
       SET state = 'half_open', probe_granted_at = p_now, updated_at = p_now
     WHERE name = p_name;
    RETURN jsonb_build_object('allowed', true, 'state', 'half_open', 'retry_after_s', NULL,
                              'probe', true);
  END IF;
  RETURN jsonb_build_object('allowed', false, 'state', s.state,
                            'retry_after_s', greatest(p_open_s - v_elapsed, 0),
                            'probe', false);
END $$;

-- Record an executor outcome. Guarantee: in closed state, p_threshold failures inside the window
-- (and after the last close) open the circuit, atomically with the event that tips it; in
-- half_open the probe's outcome closes (success) or re-opens (failure) it.
CREATE OR REPLACE FUNCTION boundary_inference.breaker_record(
  p_name text,
  p_ok boolean,
  p_kind text DEFAULT NULL,
  p_threshold integer DEFAULT 5,
  p_window_s numeric DEFAULT 3600,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  s circuit_breakers;
  v_failures integer;
BEGIN
  INSERT INTO circuit_breakers (name, state, updated_at) VALUES (p_name, 'closed', p_now)
  ON CONFLICT (name) DO NOTHING;
  SELECT * INTO s FROM circuit_breakers WHERE name = p_name FOR UPDATE;

  INSERT INTO circuit_breaker_events (name, ok, kind, at) VALUES (p_name, p_ok, p_kind, p_now);

  IF s.state = 'half_open' THEN
    IF p_ok THEN
      UPDATE circuit_breakers
         SET state = 'closed', closed_at = p_now, probe_granted_at = NULL, updated_at = p_now
       WHERE name = p_name RETURNING * INTO s;
    ELSE
      UPDATE circuit_breakers
         SET state = 'open', opened_at = p_now, probe_granted_at = NULL, updated_at = p_now
       WHERE name = p_name RETURNING * INTO s;
    END IF;
  END IF;

  v_failures := _breaker_failures(p_name, p_window_s, p_now, s.closed_at);
  IF s.state = 'closed' AND NOT p_ok AND v_failures >= p_threshold THEN
    UPDATE circuit_breakers
       SET state = 'open', opened_at = p_now, probe_granted_at = NULL, updated_at = p_now
     WHERE name = p_name RETURNING * INTO s;
  END IF;
  RETURN jsonb_build_object('state', s.state, 'failures_in_window', v_failures);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.breaker_reset(
  p_name text,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
BEGIN
  INSERT INTO circuit_breakers AS c (name, state, closed_at, updated_at)
  VALUES (p_name, 'closed', p_now, p_now)
  ON CONFLICT (name) DO UPDATE
    SET state = 'closed', closed_at = p_now, opened_at = NULL, probe_granted_at = NULL,
        updated_at = p_now;
  RETURN jsonb_build_object('name', p_name, 'state', 'closed');
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.breaker_status(
  p_name text,
  p_window_s numeric DEFAULT 3600,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  s circuit_breakers;
BEGIN
  SELECT * INTO s FROM circuit_breakers WHERE name = p_name;
  RETURN jsonb_build_object(
    'name', p_name,
    'state', coalesce(s.state, 'closed'),
    'opened_at', s.opened_at,
    'closed_at', s.closed_at,
    'probe_granted_at', s.probe_granted_at,
    'failures_in_window', _breaker_failures(p_name, p_window_s, p_now, s.closed_at));
END $$;

-- ---------------------------------------------------------------------------------------------
-- Rejections
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION boundary_inference.log_rejection(
  p_rejection_type text,
  p_message text,
  p_video_id text DEFAULT NULL,
  p_tenant_id text DEFAULT NULL,
  p_frame_count integer DEFAULT NULL,
  p_estimated_cost_usd numeric DEFAULT NULL,
  p_run_id uuid DEFAULT NULL,
  p_details jsonb DEFAULT NULL,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_id uuid;
BEGIN
  INSERT INTO boundary_inference_rejections
    (rejection_type, message, video_id, tenant_id, frame_count, estimated_cost_usd, run_id,
     details, created_at)
  VALUES (p_rejection_type, p_message, p_video_id, p_tenant_id, p_frame_count,
          p_estimated_cost_usd, p_run_id, coalesce(p_details, '{}'::jsonb), p_now)
  RETURNING id INTO v_id;
  RETURN jsonb_build_object('id', v_id);
END $$;

-- Guarantee: a rejection is acknowledged once; the first acknowledger wins.
CREATE OR REPLACE FUNCTION boundary_inference.acknowledge_rejection(
  p_id uuid,
  p_by text DEFAULT NULL,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
BEGIN
  UPDATE boundary_inference_rejections
     SET acknowledged = true, acknowledged_at = p_now, acknowledged_by = p_by
   WHERE id = p_id AND NOT acknowledged;
  RETURN jsonb_build_object('id', p_id, 'acknowledged', FOUND);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.list_rejections(
  p_unacknowledged_only boolean DEFAULT false,
  p_limit integer DEFAULT 50,
  p_tenant_id text DEFAULT NULL
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.created_at DESC, r.id), '[]'::jsonb)
  FROM (
    SELECT * FROM boundary_inference_rejections
     WHERE (NOT coalesce(p_unacknowledged_only, false) OR NOT acknowledged)
       AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
     ORDER BY created_at DESC, id
     LIMIT greatest(coalesce(p_limit, 50), 0)
  ) r
$$;

CREATE OR REPLACE FUNCTION boundary_inference._notify_rejection()
RETURNS trigger LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
BEGIN
  PERFORM pg_notify('boundary_inference_rejections', json_build_object(
    'id', NEW.id, 'type', NEW.rejection_type, 'video_id', NEW.video_id,
    'schema', TG_TABLE_SCHEMA)::text);
  RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS rejection_notify ON boundary_inference.boundary_inference_rejections;
CREATE TRIGGER rejection_notify
  AFTER INSERT ON boundary_inference.boundary_inference_rejections
  FOR EACH ROW EXECUTE FUNCTION boundary_inference._notify_rejection();

-- ---------------------------------------------------------------------------------------------
-- Predictions
-- ---------------------------------------------------------------------------------------------

-- Upsert a run's predictions. Guarantee: idempotent (saving the same rows twice changes nothing);
-- within one call a repeated (frame1, frame2) keeps the last row.
CREATE OR REPLACE FUNCTION boundary_inference.save_predictions(
  p_run_id uuid,
  p_rows jsonb
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_saved integer;
BEGIN
  IF jsonb_typeof(p_rows) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'p_rows must be a JSON array' USING ERRCODE = 'BI400';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM boundary_inference_runs WHERE id = p_run_id) THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;
  INSERT INTO boundary_predictions AS p (run_id, frame1, frame2, probability, is_boundary)
  SELECT DISTINCT ON (x.frame1, x.frame2) p_run_id, x.frame1, x.frame2, x.probability,
         x.is_boundary
  FROM (
    SELECT (e.r ->> 'frame1')::integer AS frame1, (e.r ->> 'frame2')::integer AS frame2,
           (e.r ->> 'probability')::real AS probability,
           (e.r ->> 'is_boundary')::boolean AS is_boundary, e.ord
    FROM jsonb_array_elements(p_rows) WITH ORDINALITY AS e(r, ord)
  ) x
  ORDER BY x.frame1, x.frame2, x.ord DESC
  ON CONFLICT (run_id, frame1, frame2) DO UPDATE
    SET probability = EXCLUDED.probability, is_boundary = EXCLUDED.is_boundary;
  GET DIAGNOSTICS v_saved = ROW_COUNT;
  RETURN jsonb_build_object('run_id', p_run_id, 'saved', v_saved);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.get_predictions(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'frame1', frame1, 'frame2', frame2, 'probability', probability,
           'is_boundary', is_boundary) ORDER BY frame1, frame2), '[]'::jsonb)
  FROM boundary_predictions WHERE run_id = p_run_id
$$;

CREATE OR REPLACE FUNCTION boundary_inference.ping()
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$ SELECT jsonb_build_object('ok', true, 'now', now(), 'schema', 'boundary_inference') $$;

-- ---------------------------------------------------------------------------------------------
-- Security: RLS everywhere; the API roles get only what they need.
-- ---------------------------------------------------------------------------------------------

ALTER TABLE boundary_inference.videos ENABLE ROW LEVEL SECURITY;
ALTER TABLE boundary_inference.boundary_inference_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE boundary_inference.boundary_inference_rejections ENABLE ROW LEVEL SECURITY;
ALTER TABLE boundary_inference.boundary_predictions ENABLE ROW LEVEL SECURITY;
ALTER TABLE boundary_inference.circuit_breakers ENABLE ROW LEVEL SECURITY;
ALTER TABLE boundary_inference.circuit_breaker_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE boundary_inference.budget_reservations ENABLE ROW LEVEL SECURITY;

-- service_role has BYPASSRLS in Supabase (and locally when we created it); the policies make it
-- explicit and keep working if the attribute is ever missing.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['videos', 'boundary_inference_runs', 'boundary_inference_rejections',
                           'boundary_predictions', 'circuit_breakers', 'circuit_breaker_events',
                           'budget_reservations'] LOOP
    EXECUTE format('DROP POLICY IF EXISTS service_role_all ON boundary_inference.%I', t);
    EXECUTE format('CREATE POLICY service_role_all ON boundary_inference.%I FOR ALL '
                   'TO service_role USING (true) WITH CHECK (true)', t);
  END LOOP;
END $$;

-- Tenant reads. In Supabase auth.jwt() reads exactly this setting; writing it out keeps the
-- policy valid where no auth schema exists. nullif: an unset custom GUC reads as ''.
DROP POLICY IF EXISTS tenant_read ON boundary_inference.videos;
CREATE POLICY tenant_read ON boundary_inference.videos FOR SELECT TO authenticated
  USING (tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                      ->> 'tenant_id'));
DROP POLICY IF EXISTS tenant_read ON boundary_inference.boundary_inference_runs;
CREATE POLICY tenant_read ON boundary_inference.boundary_inference_runs FOR SELECT
  TO authenticated
  USING (tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                      ->> 'tenant_id'));
DROP POLICY IF EXISTS tenant_read ON boundary_inference.boundary_inference_rejections;
CREATE POLICY tenant_read ON boundary_inference.boundary_inference_rejections FOR SELECT
  TO authenticated
  USING (tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                      ->> 'tenant_id'));
DROP POLICY IF EXISTS tenant_read ON boundary_inference.boundary_predictions;
CREATE POLICY tenant_read ON boundary_inference.boundary_predictions FOR SELECT
  TO authenticated
  USING (EXISTS (
    SELECT 1 FROM boundary_inference.boundary_inference_runs r
     WHERE r.id = run_id
       AND r.tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                          ->> 'tenant_id')));

REVOKE ALL ON ALL TABLES IN SCHEMA boundary_inference FROM public, anon, authenticated;
REVOKE ALL ON SCHEMA boundary_inference FROM public, anon;
GRANT USAGE ON SCHEMA boundary_inference TO service_role, authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA boundary_inference TO service_role;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA boundary_inference TO service_role;
GRANT SELECT ON boundary_inference.videos, boundary_inference.boundary_inference_runs,
  boundary_inference.boundary_inference_rejections, boundary_inference.boundary_predictions
  TO authenticated;

-- Postgres grants EXECUTE on new functions to PUBLIC; the ledger API is for service_role only.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference FROM public, anon, authenticated;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference TO service_role;

NOTIFY pgrst, 'reload schema';
