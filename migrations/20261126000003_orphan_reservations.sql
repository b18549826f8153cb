-- Open reservations whose run has already ended. A run ends, and then its reservation is settled
-- or released in a second call; if that second call is lost (the ledger blinked, the process
-- died), the reservation stays open and keeps counting against the daily and monthly caps. The
-- monitor's stale-run reaper lists them here and closes each one: a run that got an executor call
-- is settled at what was reserved (what it billed is unknown), one that never did is released.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

-- p_min_age_s: a run that ended a moment ago is being settled by its flow right now; leave it.
CREATE OR REPLACE FUNCTION boundary_inference.orphan_reservations(
  p_limit integer DEFAULT 100,
  p_min_age_s integer DEFAULT 600,
  p_now timestamptz DEFAULT now()
)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(o) ORDER BY o.reserved_at), '[]'::jsonb)
  FROM (
    SELECT b.run_id, b.reserved_usd, b.created_at AS reserved_at, r.status AS run_status,
           r.executor_call_id, r.video_id
    FROM budget_reservations b
    JOIN boundary_inference_runs r ON r.id = b.run_id
    WHERE b.status = 'reserved'
      AND r.status NOT IN ('queued', 'running')
      AND coalesce(r.finished_at, r.updated_at) <= p_now - make_interval(secs => p_min_age_s)
    ORDER BY b.created_at
    LIMIT greatest(coalesce(p_limit, 100), 1)
  ) o
$$;

REVOKE EXECUTE ON FUNCTION boundary_inference.orphan_reservations(integer, integer, timestamptz)
  FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.orphan_reservations(integer, integer, timestamptz) TO service_role;

NOTIFY pgrst, 'reload schema';
