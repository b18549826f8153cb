-- Server-side time bounds for every RPC entry point (issue 20).
--
-- Through PostgREST the client cannot cancel a call it gave up on: without a bound of its own the
-- function runs on (up to the API role's 8 s on Supabase) and can commit after the client raised,
-- e.g. a reservation the caller believes refused. A function-level statement_timeout is hoisted by
-- PostgREST (12.2+) into the request's transaction, so the call is cancelled (57014, rolled back)
-- before the client's wait ends (boundary_inference/ledger/time_bounds.py keeps the same numbers
-- and the Supabase transport waits the bound + a margin). Guards get 4 s; scans and maintenance
-- 50 s, under Supabase's 60 s gateway cap. Through psycopg the connection's own statement_timeout
-- still applies (a function-level setting does not re-arm a running statement's timer).
--
-- A later CREATE OR REPLACE of one of these functions drops its SET clauses: repeat them there
-- (tests/test_ledger_supabase.py checks every function the Ledger calls).
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.pronamespace = 'boundary_inference'::regnamespace
       AND p.proname = ANY (ARRAY[
    'acknowledge_rejection', 'breaker_check', 'breaker_record', 'breaker_reset',
    'breaker_status', 'claim_run', 'end_abandoned_run', 'find_rejections_by_prefix', 'get_model',
    'get_run', 'get_video', 'list_models', 'list_rejections', 'list_runs', 'list_videos',
    'log_rejection', 'ping', 'queue_depth', 'recent_throughput', 'record_admission',
    'register_model', 'release_budget', 'renew_lease', 'reserve_budget', 'run_counts',
    'set_call_id', 'settle_budget', 'spend_summary', 'take_expired_lease', 'transition_run',
    'upsert_video'
       ])
  LOOP
    EXECUTE format('ALTER FUNCTION %s SET statement_timeout = %L', f, '4s');
  END LOOP;
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.pronamespace = 'boundary_inference'::regnamespace
       AND p.proname = ANY (ARRAY[
    'budget_totals_drift', 'budget_totals_rebuild', 'expired_leases', 'get_predictions',
    'get_predictions_packed', 'ledger_size', 'orphan_reservations', 'prune_predictions',
    'recent_admissions', 'runs_finished_between', 'save_predictions', 'spend_by_day'
       ])
  LOOP
    EXECUTE format('ALTER FUNCTION %s SET statement_timeout = %L', f, '50s');
  END LOOP;
END $$;
