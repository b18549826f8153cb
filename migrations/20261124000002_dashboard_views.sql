-- Dashboard views. security_invoker: a view reads with the caller's rights, so row-level security
-- of the tables below still applies (a tenant user sees only its own rows). The schema name is
-- substituted by the runner exactly as in 20261124000001_core.sql.

-- Spend per UTC day: reservations still open count at their reserved amount, settled ones at
-- their actual cost (the same "committed" the budget guard uses).
CREATE OR REPLACE VIEW boundary_inference.daily_cost WITH (security_invoker = true) AS
SELECT day,
       sum(CASE status WHEN 'reserved' THEN reserved_usd
                       WHEN 'settled' THEN coalesce(actual_usd, 0) ELSE 0 END) AS committed_usd,
       coalesce(sum(actual_usd) FILTER (WHERE status = 'settled'), 0) AS actual_usd,
       coalesce(sum(reserved_usd) FILTER (WHERE status = 'reserved'), 0) AS open_reserved_usd,
       count(*) AS reservations,
       count(*) FILTER (WHERE status = 'settled') AS settled,
       count(*) FILTER (WHERE status = 'released') AS released,
       count(DISTINCT tenant_id) AS tenants
FROM boundary_inference.budget_reservations
GROUP BY day;

CREATE OR REPLACE VIEW boundary_inference.expensive_videos WITH (security_invoker = true) AS
SELECT r.video_id,
       r.tenant_id,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded_runs,
       count(*) FILTER (WHERE r.status IN ('failed', 'timed_out')) AS failed_runs,
       coalesce(sum(r.actual_cost_usd), 0) AS actual_cost_usd,
       coalesce(sum(r.gpu_seconds), 0) AS gpu_seconds,
       max(r.created_at) AS last_run_at
FROM boundary_inference.boundary_inference_runs r
GROUP BY r.video_id, r.tenant_id;

CREATE OR REPLACE VIEW boundary_inference.queue_health WITH (security_invoker = true) AS
SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) AS total,
       min(created_at) FILTER (WHERE status = 'queued') AS oldest_queued_at,
       min(started_at) FILTER (WHERE status = 'running') AS oldest_running_at,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued'))
         AS oldest_queued_age_s,
       extract(epoch FROM now() - min(started_at) FILTER (WHERE status = 'running'))
         AS oldest_running_age_s
FROM boundary_inference.boundary_inference_runs
WHERE status IN ('queued', 'running');

CREATE OR REPLACE VIEW boundary_inference.rejection_summary WITH (security_invoker = true) AS
SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
       rejection_type,
       count(*) AS rejections,
       count(*) FILTER (WHERE NOT acknowledged) AS unacknowledged,
       count(DISTINCT video_id) AS videos,
       count(DISTINCT tenant_id) AS tenants,
       max(created_at) AS last_at
FROM boundary_inference.boundary_inference_rejections
GROUP BY 1, 2;

REVOKE ALL ON boundary_inference.daily_cost, boundary_inference.expensive_videos,
  boundary_inference.queue_health, boundary_inference.rejection_summary
  FROM public, anon, authenticated;
GRANT SELECT ON boundary_inference.daily_cost, boundary_inference.expensive_videos,
  boundary_inference.queue_health, boundary_inference.rejection_summary TO service_role;
-- Tenant dashboards: these read only tenant-scoped tables, which RLS filters.
GRANT SELECT ON boundary_inference.expensive_videos, boundary_inference.queue_health,
  boundary_inference.rejection_summary TO authenticated;

NOTIFY pgrst, 'reload schema';
