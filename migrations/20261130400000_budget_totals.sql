-- Budget totals, maintained instead of summed.
--
-- Before this, every reserve_budget summed the month's reservations twice (all tenants, then the
-- tenant) while holding the global budget lock: at 500k reservations a bitmap heap scan of 162,804
-- rows per call, about 18 admissions per second for the whole installation. Now budget_totals
-- holds, per UTC day and per UTC month, for all tenants together and for each tenant, the
-- committed amount (open reservations at their reserved amount, settled ones at their actual
-- cost, released ones at 0), the settled actual cost and the number of reservations. A trigger
-- on budget_reservations keeps it in step, in the same transaction as the row change, so every
-- writer (reserve_budget, settle_budget, release_budget, a back-fill, a hand-made fix) moves the
-- totals with it. A reservation now reads four rows by primary key, whatever the history.
--
-- Serialisation is unchanged: reserve, settle and release still take the one budget advisory lock
-- first. The global caps make every reservation of a day read and write the same two global rows,
-- so a row lock on them would serialise exactly the same callers; the advisory lock does it with
-- no lock-order question (a re-reserved reservation can move between days) and now guards a few
-- primary-key reads instead of a scan. It is still held until the commit is on disk (PostgreSQL
-- releases locks after the commit's WAL flush), so reservations follow one another at most once per
-- flush; `bench --scale` measures both. reserve_budget reports how long it waited (lock_wait_ms).
--
-- budget_totals_drift() compares the totals with the reservations (the monitor runs it) and
-- budget_totals_rebuild() recomputes them under the lock (this migration's back-fill, and the
-- repair for any drift found).
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

CREATE TABLE IF NOT EXISTS boundary_inference.budget_totals (
  -- day / month: all tenants together (tenant_id = ''); tenant_day / tenant_month: one tenant.
  scope         text NOT NULL CHECK (scope IN ('day', 'month', 'tenant_day', 'tenant_month')),
  period        date NOT NULL,  -- the UTC day, or the first day of the UTC month
  tenant_id     text NOT NULL,
  committed_usd numeric NOT NULL DEFAULT 0,
  actual_usd    numeric NOT NULL DEFAULT 0,  -- settled reservations' actual cost
  reservations  integer NOT NULL DEFAULT 0,  -- reservation rows, whatever their status
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (scope, period, tenant_id),
  CHECK ((scope IN ('day', 'month')) = (tenant_id = ''))
);

CREATE OR REPLACE FUNCTION boundary_inference._budget_totals_follow()
RETURNS trigger LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
BEGIN
  -- Old contribution out, new one in; rows whose net change is nil are not touched (a settle
  -- repeated with the same amount, an update of updated_at only). Rows are written in primary-key
  -- order, the same order for every writer.
  INSERT INTO budget_totals AS t
    (scope, period, tenant_id, committed_usd, actual_usd, reservations, updated_at)
  SELECT d.scope, d.period, d.tenant_id, sum(d.committed_usd), sum(d.actual_usd),
         sum(d.reservations), now()
  FROM (
    SELECT 1 AS sign, NEW.* WHERE TG_OP IN ('INSERT', 'UPDATE')
    UNION ALL
    SELECT -1, OLD.* WHERE TG_OP IN ('UPDATE', 'DELETE')
  ) b
  -- A reservation's contribution, the same in _budget_totals_expected: committed counts an open
  -- reservation at its reserved amount and a settled one at its actual cost; one row counts once
  -- in its day and month, for all tenants and for its tenant.
  CROSS JOIN LATERAL (
    SELECT k.scope, k.period, k.tenant_id,
           b.sign * CASE b.status WHEN 'reserved' THEN b.reserved_usd
                                  WHEN 'settled' THEN coalesce(b.actual_usd, 0) ELSE 0 END
             AS committed_usd,
           b.sign * CASE WHEN b.status = 'settled' THEN coalesce(b.actual_usd, 0) ELSE 0 END
             AS actual_usd,
           b.sign AS reservations
    FROM (VALUES ('day', b.day, ''), ('month', b.month, ''),
                 ('tenant_day', b.day, b.tenant_id), ('tenant_month', b.month, b.tenant_id))
         AS k(scope, period, tenant_id)
  ) d
  GROUP BY d.scope, d.period, d.tenant_id
  HAVING sum(d.committed_usd) <> 0 OR sum(d.actual_usd) <> 0 OR sum(d.reservations) <> 0
  ORDER BY d.scope, d.period, d.tenant_id
  ON CONFLICT (scope, period, tenant_id) DO UPDATE
    SET committed_usd = t.committed_usd + EXCLUDED.committed_usd,
        actual_usd = t.actual_usd + EXCLUDED.actual_usd,
        reservations = t.reservations + EXCLUDED.reservations,
        updated_at = EXCLUDED.updated_at;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS budget_totals_follow ON boundary_inference.budget_reservations;
CREATE TRIGGER budget_totals_follow
  AFTER INSERT OR UPDATE OR DELETE ON boundary_inference.budget_reservations
  FOR EACH ROW EXECUTE FUNCTION boundary_inference._budget_totals_follow();

-- The totals that the reservations imply, for periods from p_since (rounded down to the first
-- of its month, so month rows are complete) on; NULL: all of history. Dynamic SQL, so the plan
-- is made for the actual date: an index range scan over one month, not a generic guess.
CREATE OR REPLACE FUNCTION boundary_inference._budget_totals_expected(p_since date DEFAULT NULL)
RETURNS TABLE (scope text, period date, tenant_id text, committed_usd numeric,
               actual_usd numeric, reservations bigint)
LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
BEGIN
  -- The contribution of a reservation as in _budget_totals_follow, summed per (day, tenant) first
  -- (a few rows a day), then spread over the four scopes.
  RETURN QUERY EXECUTE $q$
    WITH per_day AS (
      SELECT b.day, b.month, b.tenant_id,
             sum(CASE b.status WHEN 'reserved' THEN b.reserved_usd
                               WHEN 'settled' THEN coalesce(b.actual_usd, 0) ELSE 0 END)
               AS committed_usd,
             sum(CASE WHEN b.status = 'settled' THEN coalesce(b.actual_usd, 0) ELSE 0 END)
               AS actual_usd,
             count(*) AS reservations
      FROM budget_reservations b
      WHERE $1 IS NULL OR b.month >= date_trunc('month', $1)::date
      GROUP BY b.day, b.month, b.tenant_id
    )
    SELECT k.scope, k.period, k.tenant_id, sum(d.committed_usd), sum(d.actual_usd),
           sum(d.reservations)::bigint
    FROM per_day d
    CROSS JOIN LATERAL (VALUES ('day', d.day, ''), ('month', d.month, ''),
                               ('tenant_day', d.day, d.tenant_id),
                               ('tenant_month', d.month, d.tenant_id)) AS k(scope, period, tenant_id)
    GROUP BY k.scope, k.period, k.tenant_id
  $q$ USING p_since;
END $$;

-- Recompute the totals from the reservations (all of history, or from p_since's month on),
-- under the budget lock. The back-fill of this migration, and the repair for drift.
CREATE OR REPLACE FUNCTION boundary_inference.budget_totals_rebuild(p_since date DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_since date := date_trunc('month', p_since)::date;
  v_deleted integer;
  v_written integer;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('boundary_inference.budget', 0));
  DELETE FROM budget_totals WHERE v_since IS NULL OR period >= v_since;
  GET DIAGNOSTICS v_deleted = ROW_COUNT;
  INSERT INTO budget_totals (scope, period, tenant_id, committed_usd, actual_usd, reservations)
  SELECT e.scope, e.period, e.tenant_id, e.committed_usd, e.actual_usd, e.reservations
  FROM _budget_totals_expected(v_since) e
  ORDER BY e.scope, e.period, e.tenant_id;
  GET DIAGNOSTICS v_written = ROW_COUNT;
  RETURN jsonb_build_object('since', v_since, 'deleted', v_deleted, 'written', v_written);
END $$;

-- Totals rows that disagree with the reservations, from p_since's month on (default: the month
-- of p_now, the one the caps read). ok=false means a writer went around the trigger (a TRUNCATE,
-- a restored table, a hand edit): budget_totals_rebuild repairs it.
CREATE OR REPLACE FUNCTION boundary_inference.budget_totals_drift(
  p_since date DEFAULT NULL,
  p_limit integer DEFAULT 20,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_since date := date_trunc('month', coalesce(p_since, (p_now AT TIME ZONE 'UTC')::date))::date;
  v_rows jsonb;
  v_count integer;
  v_checked integer;
BEGIN
  WITH expected AS (SELECT * FROM _budget_totals_expected(v_since)),
  kept AS (
    SELECT * FROM budget_totals t
    WHERE t.scope IN ('day', 'month', 'tenant_day', 'tenant_month') AND t.period >= v_since
  ),
  diff AS (
    SELECT coalesce(e.scope, k.scope) AS scope, coalesce(e.period, k.period) AS period,
           coalesce(e.tenant_id, k.tenant_id) AS tenant_id,
           coalesce(k.committed_usd, 0) AS totals_committed_usd,
           coalesce(e.committed_usd, 0) AS reservations_committed_usd,
           coalesce(k.actual_usd, 0) AS totals_actual_usd,
           coalesce(e.actual_usd, 0) AS reservations_actual_usd,
           coalesce(k.reservations, 0) AS totals_reservations,
           coalesce(e.reservations, 0) AS reservations_count,
           (e.scope IS NOT NULL) AS in_reservations
    FROM expected e
    FULL JOIN kept k ON k.scope = e.scope AND k.period = e.period AND k.tenant_id = e.tenant_id
  )
  SELECT count(*) FILTER (WHERE totals_committed_usd <> reservations_committed_usd
                             OR totals_actual_usd <> reservations_actual_usd
                             OR totals_reservations <> reservations_count),
         count(*) FILTER (WHERE in_reservations),
         coalesce(jsonb_agg(to_jsonb(d) - 'in_reservations' ORDER BY d.period, d.scope, d.tenant_id)
                  FILTER (WHERE totals_committed_usd <> reservations_committed_usd
                             OR totals_actual_usd <> reservations_actual_usd
                             OR totals_reservations <> reservations_count), '[]'::jsonb)
    INTO v_count, v_checked, v_rows
  FROM diff d;
  RETURN jsonb_build_object(
    'ok', v_count = 0, 'since', v_since, 'checked_rows', v_checked, 'drift_rows', v_count,
    'drift', (SELECT coalesce(jsonb_agg(x), '[]'::jsonb)
              FROM (SELECT x FROM jsonb_array_elements(v_rows) x
                    LIMIT greatest(coalesce(p_limit, 20), 0)) s));
END $$;

-- Committed spend of a UTC day and month (all tenants when p_tenant_id is NULL): four
-- primary-key reads of budget_totals. A period with no row has committed nothing.
CREATE OR REPLACE FUNCTION boundary_inference._committed(
  p_day date, p_month date, p_tenant_id text
) RETURNS TABLE (daily numeric, monthly numeric, daily_actual numeric, monthly_actual numeric)
LANGUAGE plpgsql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_tenant text := coalesce(p_tenant_id, '');
  v_prefix text := CASE WHEN p_tenant_id IS NULL THEN '' ELSE 'tenant_' END;
BEGIN
  SELECT t.committed_usd, t.actual_usd INTO daily, daily_actual
    FROM budget_totals t
   WHERE t.scope = v_prefix || 'day' AND t.period = p_day AND t.tenant_id = v_tenant;
  SELECT t.committed_usd, t.actual_usd INTO monthly, monthly_actual
    FROM budget_totals t
   WHERE t.scope = v_prefix || 'month' AND t.period = p_month AND t.tenant_id = v_tenant;
  daily := coalesce(daily, 0);
  daily_actual := coalesce(daily_actual, 0);
  monthly := coalesce(monthly, 0);
  monthly_actual := coalesce(monthly_actual, 0);
  RETURN NEXT;
END $$;

-- Reserve p_amount_usd for a run. Guarantee: all reservations are serialized by one transaction
-- advisory lock, so committed spend never exceeds any cap, however many callers race (100 x $0.50
-- against $20 gives exactly 40). Idempotent per run: a run that already holds a reservation (or
-- settled one) gets ok=true again without a second charge. The totals read here are kept by the
-- trigger on budget_reservations; lock_wait_ms is how long this call waited for the lock.
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
  v_waited timestamptz := clock_timestamp();
  v_wait_ms numeric;
  g record;
  t record;
  v_reason text;
BEGIN
  IF p_amount_usd IS NULL OR p_amount_usd < 0 THEN
    RAISE EXCEPTION 'p_amount_usd must be >= 0' USING ERRCODE = 'BI400';
  END IF;
  -- One lock for all reservations: the global caps make every reservation contend anyway.
  PERFORM pg_advisory_xact_lock(hashtextextended('boundary_inference.budget', 0));
  v_wait_ms := round((extract(epoch FROM clock_timestamp() - v_waited) * 1000)::numeric, 3);

  SELECT * INTO v_existing FROM budget_reservations WHERE run_id = p_run_id;
  IF FOUND AND v_existing.status IN ('reserved', 'settled') THEN
    SELECT * INTO g FROM _committed(v_existing.day, v_existing.month, NULL);
    RETURN jsonb_build_object(
      'ok', true, 'reason', NULL, 'idempotent', true,
      'reserved_usd', v_existing.reserved_usd,
      'daily_committed_usd', g.daily, 'monthly_committed_usd', g.monthly,
      'lock_wait_ms', v_wait_ms);
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
      'tenant_daily_committed_usd', t.daily, 'tenant_monthly_committed_usd', t.monthly,
      'lock_wait_ms', v_wait_ms);
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
    'tenant_monthly_committed_usd', t.monthly + p_amount_usd,
    'lock_wait_ms', v_wait_ms);
END $$;

-- Replace a reservation by what the run really cost (the unused part is freed). Guarantee: the
-- run's committed amount becomes exactly p_actual_usd; repeatable (the last actual wins). The
-- lock keeps a concurrent reservation from reading totals this call is changing.
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

-- spend_summary is unchanged: it reads _committed, now four primary-key reads.

-- One row per UTC day, oldest first, the last p_days days up to today (days without spend: 0):
-- at most p_days rows of budget_totals, whatever the history.
CREATE OR REPLACE FUNCTION boundary_inference.spend_by_day(
  p_days integer DEFAULT 30,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  WITH bounds AS (
    SELECT (p_now AT TIME ZONE 'UTC')::date - (greatest(p_days, 1) - 1) AS first_day,
           (p_now AT TIME ZONE 'UTC')::date AS last_day
  ),
  days AS (
    SELECT d::date AS day FROM bounds, generate_series(first_day, last_day, interval '1 day') d
  ),
  kept AS (
    SELECT t.period, t.committed_usd, t.actual_usd, t.reservations
    FROM budget_totals t, bounds
    WHERE t.scope = 'day' AND t.tenant_id = '' AND t.period BETWEEN first_day AND last_day
  )
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'day', days.day,
           'committed_usd', coalesce(kept.committed_usd, 0),
           'actual_usd', coalesce(kept.actual_usd, 0),
           'reservations', coalesce(kept.reservations, 0)) ORDER BY days.day), '[]'::jsonb)
  FROM days LEFT JOIN kept ON kept.period = days.day
$$;

-- The back-fill: every existing reservation into the totals (idempotent: a full recompute).
SELECT boundary_inference.budget_totals_rebuild(NULL);

-- Security, as for every table: RLS on, service_role only.
ALTER TABLE boundary_inference.budget_totals ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS service_role_all ON boundary_inference.budget_totals;
CREATE POLICY service_role_all ON boundary_inference.budget_totals FOR ALL
  TO service_role USING (true) WITH CHECK (true);
REVOKE ALL ON boundary_inference.budget_totals FROM public, anon, authenticated;
GRANT ALL ON boundary_inference.budget_totals TO service_role;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference FROM public, anon, authenticated;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference TO service_role;

NOTIFY pgrst, 'reload schema';
