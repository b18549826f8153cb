-- Honest calibration (issue 12). The estimate's throughput was the mean of `pairs_per_s` over the
-- last 20 succeeded runs of a model name: a job of 15,000 copies of one pair (billed as 15,000,
-- run as one) moved it from 454 to 1,984 pairs/s, and CPU runs calibrated the A10G estimate.
--
-- Now a run records where it ran (executor, gpu_type) and how many distinct pairs it computed
-- (unique_pairs; duplicate_pairs is what the request repeated and was dropped), and
-- recent_throughput reads only runs of the same (model, executor, GPU type), each as
-- unique_pairs / gpu_seconds, and returns their low percentile and the samples themselves (oldest
-- first) so the caller can require a minimum number of runs and bound how far one run moves the
-- estimate (tasks/cost.py). Runs from before this migration carry no unique_pairs and are not
-- read: their pair counts may include duplicates.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

ALTER TABLE boundary_inference.boundary_inference_runs
  ADD COLUMN IF NOT EXISTS executor text,
  ADD COLUMN IF NOT EXISTS gpu_type text,
  ADD COLUMN IF NOT EXISTS unique_pairs integer
    CHECK (unique_pairs IS NULL OR unique_pairs >= 0),
  ADD COLUMN IF NOT EXISTS duplicate_pairs integer
    CHECK (duplicate_pairs IS NULL OR duplicate_pairs >= 0);

-- Serves recent_throughput: equality on the key, then the newest first in exactly the query's
-- order (finished_at DESC NULLS LAST, created_at DESC), over succeeded runs with a usable sample
-- only, so the LIMIT stops after p_runs index entries whatever the table's size.
CREATE INDEX IF NOT EXISTS boundary_inference_runs_calibration_idx
  ON boundary_inference.boundary_inference_runs
     (model_version, executor, gpu_type, finished_at DESC NULLS LAST, created_at DESC)
  WHERE status = 'succeeded' AND unique_pairs > 0 AND gpu_seconds > 0;

-- As in 20261124000001_core.sql, with the new run fields in the whitelist.
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
                   'error', 'failure_kind', 'executor', 'gpu_type', 'unique_pairs',
                   'duplicate_pairs');
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
    executor = coalesce(f ->> 'executor', executor),
    gpu_type = coalesce(f ->> 'gpu_type', gpu_type),
    unique_pairs = coalesce((f ->> 'unique_pairs')::integer, unique_pairs),
    duplicate_pairs = coalesce((f ->> 'duplicate_pairs')::integer, duplicate_pairs),
    started_at = CASE WHEN p_to_status = 'running' THEN coalesce(started_at, p_now)
                      ELSE started_at END,
    finished_at = CASE WHEN p_to_status = 'running' THEN finished_at ELSE p_now END,
    updated_at = p_now
  WHERE id = p_run_id
  RETURNING * INTO r;
  RETURN to_jsonb(r);
END $$;

DROP FUNCTION IF EXISTS boundary_inference.recent_throughput(text, integer);

-- Throughput of the last p_runs succeeded runs of (model, executor, GPU type), each measured as
-- unique_pairs / gpu_seconds. Returns {pairs_per_s: the p_percentile (linear) of those samples,
-- or null; runs; samples: oldest first; percentile; executor; gpu_type}. p_executor or p_gpu_type
-- NULL matches any (the form before this migration; not served by the calibration index).
CREATE OR REPLACE FUNCTION boundary_inference.recent_throughput(
  p_model_version text,
  p_runs integer DEFAULT 20,
  p_executor text DEFAULT NULL,
  p_gpu_type text DEFAULT NULL,
  p_percentile double precision DEFAULT 0.2
) RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_limit integer := least(greatest(coalesce(p_runs, 20), 0), 1000);
  v_p double precision := least(greatest(coalesce(p_percentile, 0.2), 0), 1);
  v_samples double precision[];
BEGIN
  IF p_executor IS NOT NULL AND p_gpu_type IS NOT NULL THEN
    SELECT array_agg(r.sample ORDER BY r.finished_at ASC NULLS FIRST, r.created_at ASC)
      INTO v_samples
      FROM (
        SELECT (unique_pairs / gpu_seconds)::double precision AS sample, finished_at, created_at
          FROM boundary_inference_runs
         WHERE model_version = p_model_version AND executor = p_executor
           AND gpu_type = p_gpu_type
           AND status = 'succeeded' AND unique_pairs > 0 AND gpu_seconds > 0
         ORDER BY finished_at DESC NULLS LAST, created_at DESC
         LIMIT v_limit
      ) r;
  ELSE
    SELECT array_agg(r.sample ORDER BY r.finished_at ASC NULLS FIRST, r.created_at ASC)
      INTO v_samples
      FROM (
        SELECT (unique_pairs / gpu_seconds)::double precision AS sample, finished_at, created_at
          FROM boundary_inference_runs
         WHERE model_version = p_model_version
           AND (p_executor IS NULL OR executor = p_executor)
           AND (p_gpu_type IS NULL OR gpu_type = p_gpu_type)
           AND status = 'succeeded' AND unique_pairs > 0 AND gpu_seconds > 0
         ORDER BY finished_at DESC NULLS LAST, created_at DESC
         LIMIT v_limit
      ) r;
  END IF;
  RETURN jsonb_build_object(
    'pairs_per_s',
      (SELECT percentile_cont(v_p) WITHIN GROUP (ORDER BY x) FROM unnest(v_samples) AS x),
    'runs', coalesce(cardinality(v_samples), 0),
    'samples', coalesce(to_jsonb(v_samples), '[]'::jsonb),
    'percentile', v_p,
    'executor', p_executor,
    'gpu_type', p_gpu_type);
END $$;

REVOKE EXECUTE ON FUNCTION boundary_inference.recent_throughput(
  text, integer, text, text, double precision) FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.recent_throughput(
  text, integer, text, text, double precision) TO service_role;
REVOKE EXECUTE ON FUNCTION boundary_inference.transition_run(uuid, text, jsonb, timestamptz)
  FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.transition_run(uuid, text, jsonb, timestamptz)
  TO service_role;

NOTIFY pgrst, 'reload schema';
