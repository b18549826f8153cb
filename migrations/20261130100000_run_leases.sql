-- Run leases and the admission record: state that survives a dead flow and a Redis that lost its
-- data. The schema name is substituted by the runner exactly as in 20261124000001_core.sql.
--
-- A live run carries a lease (lease_expires_at, always computed with the database's now(), never a
-- client's clock) that the flow watching it renews every few seconds (tasks/lease.py). A lease
-- that has expired means nobody watches the run:
--   * claim_run on its key ends it and claims anew when nothing was spawned (a queued run without
--     a call: cancelled, its reservation released), or makes the claimer its new watcher when a
--     call exists (it reattaches to the call); an expired lease is never a duplicate "skipped";
--   * the reaper (tasks/reaper.py) takes it with take_expired_lease and asks the call.
-- Runs without a lease (claimed before this migration, or by a caller that passes none) keep the
-- age rule of the reaper: expired_leases lists them past p_legacy_queued_s / p_legacy_running_s.
--
-- admitted_at records that the limiter admitted the run (cooldown and rate-window slot taken in
-- Redis); recent_admissions gives the limiter what it needs to rebuild Redis from the ledger.

ALTER TABLE boundary_inference.boundary_inference_runs
  ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
  ADD COLUMN IF NOT EXISTS lease_owner text,
  ADD COLUMN IF NOT EXISTS admitted_at timestamptz;

-- Live runs are few (the queue-depth guard bounds them): the expired-lease check at every flow
-- start and in the reaper reads only this index.
CREATE INDEX IF NOT EXISTS boundary_inference_runs_lease_idx
  ON boundary_inference.boundary_inference_runs (lease_expires_at)
  WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS boundary_inference_runs_admitted_idx
  ON boundary_inference.boundary_inference_runs (admitted_at DESC)
  WHERE admitted_at IS NOT NULL;

-- Whether live run r has nobody watching it, in the database's clock. With a lease: it expired.
-- Without one (legacy): queued longer than p_legacy_queued_s, or running longer than
-- p_legacy_running_s (the longest possible watch plus a margin).
CREATE OR REPLACE FUNCTION boundary_inference._lease_expired(
  r boundary_inference.boundary_inference_runs,
  p_legacy_queued_s numeric,
  p_legacy_running_s numeric
) RETURNS boolean LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT r.status IN ('queued', 'running') AND CASE
    WHEN r.lease_expires_at IS NOT NULL THEN r.lease_expires_at <= now()
    WHEN r.status = 'queued' THEN
      p_legacy_queued_s IS NOT NULL
      AND r.created_at <= now() - make_interval(secs => p_legacy_queued_s)
    ELSE
      p_legacy_running_s IS NOT NULL
      AND coalesce(r.started_at, r.created_at) <= now() - make_interval(secs => p_legacy_running_s)
  END
$$;

-- End a live run whose watcher is gone and that has no call to ask. Queued: nothing was spawned,
-- so it is cancelled and its reservation released. Running without a call id: the flow died
-- between "running" and recording the call, so a call may run under an id nobody saw: cancelled
-- and charged what was reserved (its worst case). Money moves only through the budget functions.
CREATE OR REPLACE FUNCTION boundary_inference._end_abandoned_run(
  r boundary_inference.boundary_inference_runs,
  p_reason text
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_money jsonb;
  v_amount numeric;
BEGIN
  PERFORM transition_run(r.id, 'cancelled', jsonb_build_object('error', left(p_reason, 1000)));
  IF r.status = 'queued' THEN
    v_money := release_budget(r.id);
    RETURN jsonb_build_object('run_id', r.id, 'was', r.status, 'action', 'released',
                              'amount_usd', coalesce((v_money ->> 'freed_usd')::numeric, 0));
  END IF;
  v_amount := coalesce(r.reserved_cost_usd, r.worst_case_cost_usd);
  IF v_amount IS NOT NULL THEN
    v_money := settle_budget(r.id, v_amount);
  END IF;
  RETURN jsonb_build_object('run_id', r.id, 'was', r.status, 'action', 'charged_worst_case',
                            'amount_usd', coalesce(v_amount, 0));
END $$;

DROP FUNCTION IF EXISTS boundary_inference.claim_run(
  text, text, text, text, integer, text, boolean, text);

-- Insert-or-get the run for (video, frames_version, model_version). Guarantee: however many
-- callers race, at most one live (queued/running) run exists per key and exactly one caller sees
-- created=true for it. A live run whose lease holds is returned (created=false) even with
-- p_force; a succeeded run is returned unless p_force, which creates a rerun pointing at it.
--
-- A live run whose lease expired (or whose lease owner is this caller: a retried flow run whose
-- earlier attempt died) has no watcher, and is never returned as a duplicate:
--   * with a call id, the caller becomes its watcher: lease and flow run id are handed over and
--     the result says taken_over=true with the executor_call_id to reattach to;
--   * without one, it is ended (_end_abandoned_run) and the claim goes on as if it never was:
--     ended_run says what happened to it.
-- p_lease_s: the new or taken-over run's lease (NULL: no lease, the legacy rule applies).
CREATE OR REPLACE FUNCTION boundary_inference.claim_run(
  p_video_id text,
  p_tenant_id text,
  p_frames_version text,
  p_model_version text,
  p_pairs integer DEFAULT NULL,
  p_priority text DEFAULT 'normal',
  p_force boolean DEFAULT false,
  p_flow_run_id text DEFAULT NULL,
  p_lease_s numeric DEFAULT NULL,
  p_lease_owner text DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
  v_tenant text;
  v_prev uuid;
  v_owner text := coalesce(p_lease_owner, p_flow_run_id);
  v_lease timestamptz;
  v_ended jsonb;
BEGIN
  IF p_lease_s IS NOT NULL AND p_lease_s <= 0 THEN
    RAISE EXCEPTION 'p_lease_s must be > 0' USING ERRCODE = 'BI400';
  END IF;
  v_lease := CASE WHEN p_lease_s IS NULL THEN NULL
                  ELSE now() + make_interval(secs => p_lease_s) END;
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
   ORDER BY created_at DESC LIMIT 1
   FOR UPDATE;
  IF FOUND THEN
    IF NOT (_lease_expired(r, NULL, NULL)
            OR (v_owner IS NOT NULL AND r.lease_owner = v_owner)) THEN
      RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                                'rerun_of', r.rerun_of, 'taken_over', false, 'ended_run', NULL);
    END IF;
    IF r.executor_call_id IS NOT NULL THEN
      UPDATE boundary_inference_runs
         SET lease_owner = v_owner,
             lease_expires_at = coalesce(v_lease, now() + interval '60 seconds'),
             flow_run_id = coalesce(p_flow_run_id, flow_run_id),
             updated_at = now()
       WHERE id = r.id
      RETURNING * INTO r;
      RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                                'rerun_of', r.rerun_of, 'taken_over', true, 'ended_run', NULL,
                                'executor_call_id', r.executor_call_id);
    END IF;
    v_ended := _end_abandoned_run(r, format(
      'lease expired: its flow stopped renewing it (last lease %s, owner %s); a new claim ended it',
      r.lease_expires_at, coalesce(r.lease_owner, '(none)')));
  END IF;

  SELECT * INTO r FROM boundary_inference_runs
   WHERE video_id = p_video_id AND frames_version = p_frames_version
     AND model_version = p_model_version AND status = 'succeeded'
   ORDER BY finished_at DESC NULLS LAST, created_at DESC LIMIT 1;
  IF FOUND THEN
    IF NOT coalesce(p_force, false) THEN
      RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                                'rerun_of', r.rerun_of, 'taken_over', false,
                                'ended_run', v_ended);
    END IF;
    v_prev := r.id;
  END IF;

  INSERT INTO boundary_inference_runs AS t
    (video_id, tenant_id, frames_version, model_version, status, priority, pairs, rerun_of,
     flow_run_id, lease_expires_at, lease_owner)
  VALUES (p_video_id, p_tenant_id, p_frames_version, p_model_version, 'queued',
          coalesce(p_priority, 'normal'), p_pairs, v_prev, p_flow_run_id, v_lease, v_owner)
  ON CONFLICT (video_id, frames_version, model_version) WHERE status IN ('queued', 'running')
  DO NOTHING
  RETURNING * INTO r;
  IF FOUND THEN
    RETURN jsonb_build_object('run_id', r.id, 'created', true, 'status', r.status,
                              'rerun_of', r.rerun_of, 'taken_over', false, 'ended_run', v_ended);
  END IF;

  -- Only reachable if a writer bypassed the advisory lock: the unique index still holds.
  SELECT * INTO r FROM boundary_inference_runs
   WHERE video_id = p_video_id AND frames_version = p_frames_version
     AND model_version = p_model_version AND status IN ('queued', 'running');
  RETURN jsonb_build_object('run_id', r.id, 'created', false, 'status', r.status,
                            'rerun_of', r.rerun_of, 'taken_over', false, 'ended_run', v_ended);
END $$;

-- Extend the lease of a live run held by p_owner to now() + p_lease_s (0: let it expire now).
-- Returns renewed=false, and never touches the row, when the run has ended or another owner has
-- taken it over: its watcher must then stop watching (and must neither cancel nor settle).
CREATE OR REPLACE FUNCTION boundary_inference.renew_lease(
  p_run_id uuid,
  p_owner text,
  p_lease_s numeric
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
BEGIN
  IF p_lease_s IS NULL OR p_lease_s < 0 THEN
    RAISE EXCEPTION 'p_lease_s must be >= 0' USING ERRCODE = 'BI400';
  END IF;
  UPDATE boundary_inference_runs
     SET lease_expires_at = now() + make_interval(secs => p_lease_s)
   WHERE id = p_run_id AND status IN ('queued', 'running')
     AND lease_owner IS NOT DISTINCT FROM p_owner
  RETURNING * INTO r;
  IF FOUND THEN
    RETURN jsonb_build_object('renewed', true, 'run_id', r.id, 'status', r.status,
                              'lease_expires_at', r.lease_expires_at, 'owner', r.lease_owner);
  END IF;
  SELECT * INTO r FROM boundary_inference_runs WHERE id = p_run_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;
  RETURN jsonb_build_object('renewed', false, 'run_id', r.id, 'status', r.status,
                            'lease_expires_at', r.lease_expires_at, 'owner', r.lease_owner);
END $$;

-- Live runs that nobody watches (expired lease, or the legacy age rule), oldest lease first, with
-- every age computed here in the database's clock: expired_for_s (since the lease ran out; NULL
-- for legacy rows) and running_for_s (since the run started; NULL while queued).
CREATE OR REPLACE FUNCTION boundary_inference.expired_leases(
  p_limit integer DEFAULT 100,
  p_legacy_queued_s numeric DEFAULT NULL,
  p_legacy_running_s numeric DEFAULT NULL
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(
           to_jsonb(r) || jsonb_build_object(
             'expired_for_s', extract(epoch FROM now() - r.lease_expires_at),
             'running_for_s', extract(epoch FROM now() - r.started_at),
             'age_s', extract(epoch FROM now() - coalesce(r.started_at, r.created_at)))
           ORDER BY r.lease_expires_at NULLS FIRST, r.created_at), '[]'::jsonb)
  FROM (
    SELECT * FROM boundary_inference_runs r
     WHERE r.status IN ('queued', 'running')
       AND _lease_expired(r, p_legacy_queued_s, p_legacy_running_s)
     ORDER BY r.lease_expires_at NULLS FIRST, r.created_at
     LIMIT greatest(coalesce(p_limit, 100), 1)
  ) r
$$;

-- Take over a run nobody watches (the reaper): only if its lease has expired (or, legacy, it is
-- past the age rule), atomically, so of any number of reapers and claimers exactly one gets it.
-- Returns {taken, run} with the run's ages as in expired_leases.
CREATE OR REPLACE FUNCTION boundary_inference.take_expired_lease(
  p_run_id uuid,
  p_owner text,
  p_lease_s numeric,
  p_legacy_queued_s numeric DEFAULT NULL,
  p_legacy_running_s numeric DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
BEGIN
  IF p_owner IS NULL OR p_lease_s IS NULL OR p_lease_s <= 0 THEN
    RAISE EXCEPTION 'p_owner and p_lease_s > 0 are required' USING ERRCODE = 'BI400';
  END IF;
  SELECT * INTO r FROM boundary_inference_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;
  IF NOT _lease_expired(r, p_legacy_queued_s, p_legacy_running_s) THEN
    RETURN jsonb_build_object('taken', false, 'run', to_jsonb(r));
  END IF;
  UPDATE boundary_inference_runs
     SET lease_owner = p_owner, lease_expires_at = now() + make_interval(secs => p_lease_s)
   WHERE id = p_run_id
  RETURNING * INTO r;
  RETURN jsonb_build_object('taken', true, 'run', to_jsonb(r) || jsonb_build_object(
    'running_for_s', extract(epoch FROM now() - r.started_at),
    'age_s', extract(epoch FROM now() - coalesce(r.started_at, r.created_at))));
END $$;

-- End a run taken with take_expired_lease that has no call to ask (see _end_abandoned_run); only
-- while p_owner still holds it.
CREATE OR REPLACE FUNCTION boundary_inference.end_abandoned_run(
  p_run_id uuid,
  p_owner text,
  p_reason text
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
BEGIN
  SELECT * INTO r FROM boundary_inference_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;
  IF r.status NOT IN ('queued', 'running') OR r.lease_owner IS DISTINCT FROM p_owner THEN
    RETURN jsonb_build_object('ended', false, 'run_id', r.id, 'status', r.status);
  END IF;
  RETURN _end_abandoned_run(r, p_reason) || jsonb_build_object('ended', true);
END $$;

-- The limiter admitted this run (its cooldown and window slot are taken in Redis). Idempotent: the
-- first admission time stays. Only a live run can be admitted (BI409).
CREATE OR REPLACE FUNCTION boundary_inference.record_admission(p_run_id uuid)
RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  r boundary_inference_runs;
BEGIN
  UPDATE boundary_inference_runs SET admitted_at = coalesce(admitted_at, now())
   WHERE id = p_run_id AND status IN ('queued', 'running')
  RETURNING * INTO r;
  IF NOT FOUND THEN
    SELECT * INTO r FROM boundary_inference_runs WHERE id = p_run_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
    END IF;
    RAISE EXCEPTION 'run % is %: it cannot be admitted', p_run_id, r.status
      USING ERRCODE = 'BI409';
  END IF;
  RETURN jsonb_build_object('run_id', r.id, 'admitted_at', r.admitted_at);
END $$;

-- Admissions of the last p_window_s seconds, newest first, for rebuilding the limiter's Redis
-- state: {run_id, video_id, age_s} with age_s in the database's clock (the limiter turns ages into
-- its own server's clock, so no two clocks are ever compared). A run refused by a later guard was
-- refunded in Redis and ended 'rejected': it does not count. Every other admitted run does, ended
-- or not (a spawned run used its quota; erring towards admitting less).
CREATE OR REPLACE FUNCTION boundary_inference.recent_admissions(
  p_window_s numeric,
  p_limit integer DEFAULT 10000
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'run_id', a.id, 'video_id', a.video_id,
           'age_s', extract(epoch FROM now() - a.admitted_at)) ORDER BY a.admitted_at DESC),
         '[]'::jsonb)
  FROM (
    SELECT id, video_id, admitted_at FROM boundary_inference_runs
     WHERE admitted_at IS NOT NULL
       AND admitted_at > now() - make_interval(secs => greatest(coalesce(p_window_s, 0), 0))
       AND status <> 'rejected'
     ORDER BY admitted_at DESC
     LIMIT greatest(coalesce(p_limit, 10000), 1)
  ) a
$$;

-- As in the core migration: the ledger API (helpers included: SQL functions run with their
-- caller's rights) is for service_role only.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference FROM public, anon, authenticated;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference TO service_role;

NOTIFY pgrst, 'reload schema';
