-- list_rejections, the monitor's and the CLI's read of open rejections, planned per case.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.
--
-- As one SQL function its filter `(NOT p_unacknowledged_only OR NOT acknowledged)` was planned
-- without the argument's value, so it could not use boundary_inference_rejections_open_idx (the
-- partial index on open rejections): when fewer rejections were open than p_limit, it walked the
-- whole created_at index of every rejection ever recorded (tests/test_ledger_plans.py at a million
-- runs). Two statements, one per case, each with a plan that matches it: open ones read only the
-- partial index, all of them the newest p_limit of the created_at index.
CREATE OR REPLACE FUNCTION boundary_inference.list_rejections(
  p_unacknowledged_only boolean DEFAULT false,
  p_limit integer DEFAULT 50,
  p_tenant_id text DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_limit integer := greatest(coalesce(p_limit, 50), 0);
  v_rows jsonb;
BEGIN
  IF coalesce(p_unacknowledged_only, false) THEN
    SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.created_at DESC, r.id), '[]'::jsonb)
      INTO v_rows
      FROM (
        SELECT * FROM boundary_inference_rejections
         WHERE NOT acknowledged
           AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
         ORDER BY created_at DESC, id
         LIMIT v_limit
      ) r;
  ELSE
    SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.created_at DESC, r.id), '[]'::jsonb)
      INTO v_rows
      FROM (
        SELECT * FROM boundary_inference_rejections
         WHERE (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
         ORDER BY created_at DESC, id
         LIMIT v_limit
      ) r;
  END IF;
  RETURN v_rows;
END $$;
