-- reconcile's read: the runs that finished in a window, oldest first, read by an index on when
-- they finished. It used to fetch the newest 100,000 runs of any age and filter in Python: a
-- window older than the newest 100,000 runs came back empty, and every call read them all.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.
CREATE INDEX IF NOT EXISTS boundary_inference_runs_finished_idx
  ON boundary_inference.boundary_inference_runs (finished_at)
  WHERE finished_at IS NOT NULL;

CREATE OR REPLACE FUNCTION boundary_inference.runs_finished_between(
  p_start timestamptz,
  p_end timestamptz DEFAULT NULL,
  p_limit integer DEFAULT 1000000
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.finished_at, r.id), '[]'::jsonb)
  FROM (
    SELECT * FROM boundary_inference_runs
     WHERE finished_at IS NOT NULL
       AND finished_at >= p_start
       AND (p_end IS NULL OR finished_at < p_end)
     ORDER BY finished_at, id
     LIMIT greatest(coalesce(p_limit, 1000000), 0)
  ) r
$$;

REVOKE EXECUTE ON FUNCTION boundary_inference.runs_finished_between(timestamptz, timestamptz, integer)
  FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.runs_finished_between(timestamptz, timestamptz, integer)
  TO service_role;
