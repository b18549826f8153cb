-- The monitor's failure rate and burst count, counted where the runs are.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.
--
-- The monitor used to fetch the newest 5,000 runs (list_runs) and count them in Python: 310 ms at
-- a million runs of history (bench --scale), most of it building and parsing 5,000 JSON rows, and
-- a window with more runs than that was cut short. Counting here reads only the runs of the
-- window, through the finished_at index (20261130700001) and the created_at index.
CREATE OR REPLACE FUNCTION boundary_inference.run_counts(
  p_finished_since timestamptz,
  p_created_since timestamptz
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT jsonb_build_object(
    'finished', f.finished,
    'failed', f.failed,
    'created', (SELECT count(*) FROM boundary_inference_runs WHERE created_at >= p_created_since)
  )
  FROM (
    SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'timed_out', 'cancelled'))
             AS finished,
           count(*) FILTER (WHERE status IN ('failed', 'timed_out')) AS failed
      FROM boundary_inference_runs
     WHERE finished_at IS NOT NULL AND finished_at >= p_finished_since
  ) f
$$;

REVOKE EXECUTE ON FUNCTION boundary_inference.run_counts(timestamptz, timestamptz)
  FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.run_counts(timestamptz, timestamptz) TO service_role;
