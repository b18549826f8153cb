-- Predictions stored for their size: packed arrays, one row per chunk of a run, not one row per
-- pair.
--
-- boundary_predictions held one row per frame pair: about 100 bytes a pair with its primary-key
-- entry, 2.5 MB for a 25,000-pair job, and every pair a JSON object through PostgREST. Now a chunk
-- (one save_predictions call, at most a few thousand pairs) is one row of four parallel arrays,
-- which PostgreSQL compresses (TOAST) as one value: about 13 bytes a pair before compression.
-- The JSON that travels is columnar too: {"frame1": [...], "frame2": [...], "probability": [...],
-- "is_boundary": [...]}. The row-per-pair JSON of the old API is still accepted and returned.
--
-- A chunk number makes a batch idempotent: the flow writes batch i as chunk i, and a retried flow
-- rewrites the same chunks. Without a chunk number a save appends one; the reader keeps, for a pair
-- saved more than once, the value from the highest chunk (the last save), as the old upsert did.
--
-- Retention: prune_predictions(p_keep_days) deletes whole runs' predictions saved more than
-- p_keep_days ago, a bounded number of runs per call (the monitor and `boundary-inference ledger
-- prune-predictions` call it until nothing is left).
--
-- The existing rows are packed into chunks of 5,000 pairs by this migration, then the old table is
-- dropped.
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

CREATE TABLE IF NOT EXISTS boundary_inference.boundary_prediction_chunks (
  run_id      uuid NOT NULL
              REFERENCES boundary_inference.boundary_inference_runs (id) ON DELETE CASCADE,
  chunk       integer NOT NULL CHECK (chunk >= 0),
  pairs       integer NOT NULL CHECK (pairs > 0),
  frame1      integer[] NOT NULL,
  frame2      integer[] NOT NULL,
  probability real[] NOT NULL,
  is_boundary boolean[] NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (run_id, chunk),
  CHECK (cardinality(frame1) = pairs AND cardinality(frame2) = pairs
         AND cardinality(probability) = pairs AND cardinality(is_boundary) = pairs)
);
-- Retention deletes the oldest first.
CREATE INDEX IF NOT EXISTS boundary_prediction_chunks_created_idx
  ON boundary_inference.boundary_prediction_chunks (created_at);

-- Existing rows, packed (idempotent: applying the files twice finds the old table empty).
DO $$
BEGIN
  IF to_regclass('boundary_inference.boundary_predictions') IS NOT NULL THEN
    INSERT INTO boundary_inference.boundary_prediction_chunks
      (run_id, chunk, pairs, frame1, frame2, probability, is_boundary)
    SELECT run_id, (n - 1) / 5000, count(*)::integer,
           array_agg(frame1 ORDER BY n), array_agg(frame2 ORDER BY n),
           array_agg(probability ORDER BY n), array_agg(is_boundary ORDER BY n)
    FROM (
      SELECT p.*, row_number() OVER (PARTITION BY p.run_id ORDER BY p.frame1, p.frame2) AS n
      FROM boundary_inference.boundary_predictions p
    ) x
    GROUP BY run_id, (n - 1) / 5000
    ON CONFLICT (run_id, chunk) DO NOTHING;
    DROP TABLE boundary_inference.boundary_predictions;
  END IF;
END $$;

DROP FUNCTION IF EXISTS boundary_inference.save_predictions(uuid, jsonb);

-- Store a batch of a run's predictions as one chunk. p_rows: the columns
-- {frame1: [...], frame2: [...], probability: [...], is_boundary: [...]} (compact), or a JSON
-- array of {frame1, frame2, probability, is_boundary} rows (the earlier form). Guarantee: with
-- p_chunk, idempotent (the chunk is replaced); without, appended after the run's last chunk;
-- within one call a repeated (frame1, frame2) keeps the last value. Returns {run_id, saved, chunk}
-- (saved: distinct pairs in this batch; chunk NULL when nothing was saved). p_now is the chunk's
-- saved-at time, which retention counts from.
CREATE OR REPLACE FUNCTION boundary_inference.save_predictions(
  p_run_id uuid,
  p_rows jsonb,
  p_chunk integer DEFAULT NULL,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_kind text := jsonb_typeof(p_rows);
  v_lengths integer[];
  v_f1 integer[];
  v_f2 integer[];
  v_p real[];
  v_b boolean[];
  v_n integer;
  v_chunk integer := p_chunk;
BEGIN
  IF p_chunk IS NOT NULL AND p_chunk < 0 THEN
    RAISE EXCEPTION 'p_chunk must be >= 0' USING ERRCODE = 'BI400';
  END IF;
  IF v_kind = 'object' THEN
    SELECT array_agg(CASE WHEN jsonb_typeof(p_rows -> k.name) = 'array'
                          THEN jsonb_array_length(p_rows -> k.name) END ORDER BY k.o)
      INTO v_lengths
      FROM unnest(ARRAY['frame1', 'frame2', 'probability', 'is_boundary'])
           WITH ORDINALITY AS k(name, o);
    IF array_position(v_lengths, NULL) IS NOT NULL OR v_lengths[1] <> v_lengths[2]
       OR v_lengths[1] <> v_lengths[3] OR v_lengths[1] <> v_lengths[4] THEN
      RAISE EXCEPTION 'p_rows needs arrays frame1, frame2, probability, is_boundary of one length'
        USING ERRCODE = 'BI400';
    END IF;
  ELSIF v_kind IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'p_rows must be a JSON object of columns or a JSON array of rows'
      USING ERRCODE = 'BI400';
  END IF;
  -- A batch is bounded (one call is one request through PostgREST): a job's pairs at most.
  IF coalesce(v_lengths[1], jsonb_array_length(CASE WHEN v_kind = 'array' THEN p_rows END), 0)
     > 100000 THEN
    RAISE EXCEPTION 'at most 100000 pairs per call: save a large run in chunks'
      USING ERRCODE = 'BI400';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM boundary_inference_runs WHERE id = p_run_id) THEN
    RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'BI404';
  END IF;

  WITH given AS (
    SELECT (c.f1)::integer AS f1, (c.f2)::integer AS f2, (c.p)::real AS p, (c.b)::boolean AS b,
           c.ord
    FROM ROWS FROM (jsonb_array_elements_text(p_rows -> 'frame1'),
                    jsonb_array_elements_text(p_rows -> 'frame2'),
                    jsonb_array_elements_text(p_rows -> 'probability'),
                    jsonb_array_elements_text(p_rows -> 'is_boundary'))
         WITH ORDINALITY AS c(f1, f2, p, b, ord)
    WHERE v_kind = 'object'
    UNION ALL
    SELECT (e.r ->> 'frame1')::integer, (e.r ->> 'frame2')::integer,
           (e.r ->> 'probability')::real, (e.r ->> 'is_boundary')::boolean, e.ord
    FROM jsonb_array_elements(CASE WHEN v_kind = 'array' THEN p_rows ELSE '[]' END)
         WITH ORDINALITY AS e(r, ord)
  ),
  latest AS (
    SELECT DISTINCT ON (f1, f2) f1, f2, p, b FROM given ORDER BY f1, f2, ord DESC
  )
  SELECT array_agg(f1 ORDER BY f1, f2), array_agg(f2 ORDER BY f1, f2),
         array_agg(p ORDER BY f1, f2), array_agg(b ORDER BY f1, f2), count(*)
    INTO v_f1, v_f2, v_p, v_b, v_n
  FROM latest;

  IF v_n = 0 THEN
    RETURN jsonb_build_object('run_id', p_run_id, 'saved', 0, 'chunk', NULL);
  END IF;
  IF array_position(v_f1, NULL) IS NOT NULL OR array_position(v_f2, NULL) IS NOT NULL
     OR array_position(v_p, NULL) IS NOT NULL OR array_position(v_b, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'every pair needs frame1, frame2, probability and is_boundary'
      USING ERRCODE = 'BI400';
  END IF;

  IF v_chunk IS NULL THEN
    -- Appending: serialise appenders of this run so two never take the same number.
    PERFORM pg_advisory_xact_lock(hashtextextended(
      'boundary_inference.save_predictions' || p_run_id::text, 0));
    SELECT coalesce(max(chunk) + 1, 0) INTO v_chunk
      FROM boundary_prediction_chunks WHERE run_id = p_run_id;
  END IF;
  INSERT INTO boundary_prediction_chunks AS c
    (run_id, chunk, pairs, frame1, frame2, probability, is_boundary, created_at)
  VALUES (p_run_id, v_chunk, v_n, v_f1, v_f2, v_p, v_b, p_now)
  ON CONFLICT (run_id, chunk) DO UPDATE
    SET pairs = EXCLUDED.pairs, frame1 = EXCLUDED.frame1, frame2 = EXCLUDED.frame2,
        probability = EXCLUDED.probability, is_boundary = EXCLUDED.is_boundary,
        created_at = EXCLUDED.created_at;
  RETURN jsonb_build_object('run_id', p_run_id, 'saved', v_n, 'chunk', v_chunk);
END $$;

-- A run's predictions, one pair once (the highest chunk's value), as rows ordered by
-- (frame1, frame2): the JSON this function always returned.
CREATE OR REPLACE FUNCTION boundary_inference.get_predictions(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'frame1', f1, 'frame2', f2, 'probability', p, 'is_boundary', b)
           ORDER BY f1, f2), '[]'::jsonb)
  FROM (
    SELECT DISTINCT ON (u.f1, u.f2) u.f1, u.f2, u.p, u.b
    FROM boundary_prediction_chunks c,
         unnest(c.frame1, c.frame2, c.probability, c.is_boundary) AS u(f1, f2, p, b)
    WHERE c.run_id = p_run_id
    ORDER BY u.f1, u.f2, c.chunk DESC
  ) x
$$;

-- The same, as columns: {run_id, pairs, frame1: [...], frame2: [...], probability: [...],
-- is_boundary: [...]}, a quarter of the JSON of get_predictions for a large run.
CREATE OR REPLACE FUNCTION boundary_inference.get_predictions_packed(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT jsonb_build_object(
           'run_id', p_run_id,
           'pairs', count(*),
           'frame1', coalesce(to_jsonb(array_agg(f1 ORDER BY f1, f2)), '[]'::jsonb),
           'frame2', coalesce(to_jsonb(array_agg(f2 ORDER BY f1, f2)), '[]'::jsonb),
           'probability', coalesce(to_jsonb(array_agg(p ORDER BY f1, f2)), '[]'::jsonb),
           'is_boundary', coalesce(to_jsonb(array_agg(b ORDER BY f1, f2)), '[]'::jsonb))
  FROM (
    SELECT DISTINCT ON (u.f1, u.f2) u.f1, u.f2, u.p, u.b
    FROM boundary_prediction_chunks c,
         unnest(c.frame1, c.frame2, c.probability, c.is_boundary) AS u(f1, f2, p, b)
    WHERE c.run_id = p_run_id
    ORDER BY u.f1, u.f2, c.chunk DESC
  ) x
$$;

-- Delete the predictions of up to p_limit runs with a chunk saved more than p_keep_days before
-- p_now, oldest first, whole runs at a time (a reader never sees half a run). Returns {cutoff, runs, chunks,
-- more}; call again while more is true.
CREATE OR REPLACE FUNCTION boundary_inference.prune_predictions(
  p_keep_days integer,
  p_limit integer DEFAULT 500,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v_cutoff timestamptz;
  v_limit integer := greatest(coalesce(p_limit, 500), 1);
  v_runs uuid[] := '{}';
  v_run uuid;
  v_chunks integer;
BEGIN
  IF p_keep_days IS NULL OR p_keep_days < 0 THEN
    RAISE EXCEPTION 'p_keep_days must be >= 0' USING ERRCODE = 'BI400';
  END IF;
  v_cutoff := p_now - make_interval(days => p_keep_days);
  -- Oldest chunks first, until p_limit distinct runs: reads about p_limit x (chunks per run)
  -- index entries, however large the backlog.
  FOR v_run IN
    SELECT c.run_id FROM boundary_prediction_chunks c
    WHERE c.created_at < v_cutoff ORDER BY c.created_at
  LOOP
    IF NOT v_run = ANY (v_runs) THEN
      v_runs := v_runs || v_run;
      EXIT WHEN cardinality(v_runs) >= v_limit;
    END IF;
  END LOOP;
  DELETE FROM boundary_prediction_chunks WHERE run_id = ANY (v_runs);
  GET DIAGNOSTICS v_chunks = ROW_COUNT;
  RETURN jsonb_build_object(
    'cutoff', v_cutoff, 'runs', cardinality(v_runs), 'chunks', v_chunks,
    'more', EXISTS (SELECT 1 FROM boundary_prediction_chunks WHERE created_at < v_cutoff));
END $$;

-- How big each ledger table is (rows as the planner estimates them, bytes with indexes and
-- TOAST), largest first: what `boundary-inference ledger size` prints.
CREATE OR REPLACE FUNCTION boundary_inference.ledger_size()
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'table', c.relname,
           'rows', greatest(c.reltuples, 0)::bigint,
           'total_bytes', pg_total_relation_size(c.oid),
           'table_bytes', pg_relation_size(c.oid),
           'index_bytes', pg_indexes_size(c.oid))
           ORDER BY pg_total_relation_size(c.oid) DESC, c.relname), '[]'::jsonb)
  FROM pg_class c
  WHERE c.relnamespace = 'boundary_inference'::regnamespace AND c.relkind = 'r'
$$;

-- Security: like the old predictions table, readable by a tenant for its own runs.
ALTER TABLE boundary_inference.boundary_prediction_chunks ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS service_role_all ON boundary_inference.boundary_prediction_chunks;
CREATE POLICY service_role_all ON boundary_inference.boundary_prediction_chunks FOR ALL
  TO service_role USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS tenant_read ON boundary_inference.boundary_prediction_chunks;
CREATE POLICY tenant_read ON boundary_inference.boundary_prediction_chunks FOR SELECT
  TO authenticated
  USING (EXISTS (
    SELECT 1 FROM boundary_inference.boundary_inference_runs r
     WHERE r.id = run_id
       AND r.tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                          ->> 'tenant_id')));
REVOKE ALL ON boundary_inference.boundary_prediction_chunks FROM public, anon, authenticated;
GRANT ALL ON boundary_inference.boundary_prediction_chunks TO service_role;
GRANT SELECT ON boundary_inference.boundary_prediction_chunks TO authenticated;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference FROM public, anon, authenticated;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA boundary_inference TO service_role;

NOTIFY pgrst, 'reload schema';
