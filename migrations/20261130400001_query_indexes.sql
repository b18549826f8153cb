-- Indexes that match the queries the guards and the monitor run, so their cost follows what they
-- return, not how much history the ledger holds. Each was found by explaining the function at a
-- million runs (tests/test_ledger_plans.py keeps it so).
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

-- recent_throughput (the cost guard's calibration) orders a model's succeeded runs by
-- finished_at DESC NULLS LAST, created_at DESC: boundary_inference_runs_model_done_idx keeps NULLs
-- first, so the planner read every succeeded run of the model and sorted them. This one hands
-- over the newest p_runs in order.
CREATE INDEX IF NOT EXISTS boundary_inference_runs_calibration_idx
  ON boundary_inference.boundary_inference_runs
     (model_version, finished_at DESC NULLS LAST, created_at DESC)
  WHERE status = 'succeeded' AND pairs_per_s > 0;

-- orphan_reservations (the reaper) looks for open reservations, oldest first. Open ones are the
-- live runs' and the few orphans, a handful among all reservations ever made.
CREATE INDEX IF NOT EXISTS budget_reservations_open_idx
  ON boundary_inference.budget_reservations (created_at)
  WHERE status = 'reserved';

-- The per-day sums this served (_committed, spend_by_day) are maintained in budget_totals now;
-- nothing reads reservations by day any more, and every reservation paid for keeping it.
DROP INDEX IF EXISTS boundary_inference.budget_reservations_day_idx;
