-- Half-open closes only on the probe's own success. Before this, any job's success recorded
-- while half_open closed the circuit: a job admitted before the circuit opened, finishing late,
-- could close it with no evidence about the service now. A failure still re-opens it from any
-- job (erring towards spending nothing). p_probe NULL keeps the earlier rule for old callers.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

DROP FUNCTION IF EXISTS boundary_inference.breaker_record(
  text, boolean, text, integer, numeric, timestamptz);

CREATE OR REPLACE FUNCTION boundary_inference.breaker_record(
  p_name text,
  p_ok boolean,
  p_kind text DEFAULT NULL,
  p_threshold integer DEFAULT 5,
  p_window_s numeric DEFAULT 3600,
  p_now timestamptz DEFAULT now(),
  p_probe boolean DEFAULT NULL
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
    IF p_ok AND coalesce(p_probe, true) THEN
      UPDATE circuit_breakers
         SET state = 'closed', closed_at = p_now, probe_granted_at = NULL, updated_at = p_now
       WHERE name = p_name RETURNING * INTO s;
    ELSIF NOT p_ok THEN
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

REVOKE EXECUTE ON FUNCTION boundary_inference.breaker_record(
  text, boolean, text, integer, numeric, timestamptz, boolean) FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.breaker_record(
  text, boolean, text, integer, numeric, timestamptz, boolean) TO service_role;

NOTIFY pgrst, 'reload schema';
