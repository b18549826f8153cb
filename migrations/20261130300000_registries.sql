-- Registries: a video row says what was registered (frames, size, codec, and the source's
-- fingerprint), and a checkpoint is known only once registered, by content hash.
--
-- Videos: the new columns are nullable, so rows written before this migration (and callers that
-- pass the old six arguments) still work; admission compares only what a row recorded. A crop box
-- is refused unless it is made of integers, starts at x, y >= 0, has a positive size and, when the
-- frame size is known, lies inside the frame (BI400).
--
-- Models: one row per `ckpt:<name>`, immutable content (a model version is a dedup key: the same
-- name with another file would make an old result look like the new model's). Registering the same
-- file again only adds where it was put (a local directory, a Modal Volume); another file under the
-- same name is BI409.
--
-- The schema name is substituted by the runner exactly as in 20261124000001_core.sql.

ALTER TABLE boundary_inference.videos
  ADD COLUMN IF NOT EXISTS width integer CHECK (width IS NULL OR width > 0),
  ADD COLUMN IF NOT EXISTS height integer CHECK (height IS NULL OR height > 0),
  ADD COLUMN IF NOT EXISTS codec text,
  ADD COLUMN IF NOT EXISTS size_bytes bigint CHECK (size_bytes IS NULL OR size_bytes > 0),
  ADD COLUMN IF NOT EXISTS content_hash text
    CHECK (content_hash IS NULL OR content_hash ~ '^sha256:[0-9a-f]{64}$'),
  ADD COLUMN IF NOT EXISTS etag text,
  ADD COLUMN IF NOT EXISTS version_id text,
  ADD COLUMN IF NOT EXISTS modified text;

-- Why a crop box cannot be used on a frame of p_width x p_height (NULL: it can, or no box).
-- A box without its four keys is left to the table's CHECK (SQLSTATE 23514), as before.
CREATE OR REPLACE FUNCTION boundary_inference._crop_problem(
  p_crop jsonb, p_width integer, p_height integer
) RETURNS text LANGUAGE plpgsql IMMUTABLE
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  k text;
  v numeric;
  x numeric;
  y numeric;
  w numeric;
  h numeric;
BEGIN
  IF p_crop IS NULL OR jsonb_typeof(p_crop) <> 'object'
     OR NOT p_crop ?& ARRAY['x', 'y', 'width', 'height'] THEN
    RETURN NULL;
  END IF;
  FOREACH k IN ARRAY ARRAY['x', 'y', 'width', 'height'] LOOP
    IF jsonb_typeof(p_crop -> k) IS DISTINCT FROM 'number' THEN
      RETURN format('crop_box.%s must be an integer, got %s', k, p_crop -> k);
    END IF;
    v := (p_crop ->> k)::numeric;
    IF v <> trunc(v) OR abs(v) > 2147483647 THEN
      RETURN format('crop_box.%s must be an integer, got %s', k, p_crop -> k);
    END IF;
  END LOOP;
  x := (p_crop ->> 'x')::numeric;
  y := (p_crop ->> 'y')::numeric;
  w := (p_crop ->> 'width')::numeric;
  h := (p_crop ->> 'height')::numeric;
  IF x < 0 OR y < 0 THEN
    RETURN format('crop_box starts at (%s, %s): x and y must be >= 0', x, y);
  END IF;
  IF w <= 0 OR h <= 0 THEN
    RETURN format('crop_box is %s x %s: width and height must be > 0', w, h);
  END IF;
  IF (p_width IS NOT NULL AND x + w > p_width) OR (p_height IS NOT NULL AND y + h > p_height) THEN
    RETURN format('crop_box x=%s, y=%s, width=%s, height=%s is not inside the %s x %s frame',
                  x, y, w, h, coalesce(p_width::text, '?'), coalesce(p_height::text, '?'));
  END IF;
  RETURN NULL;
END $$;

-- The old six-argument form is replaced (an overload would make named calls ambiguous); every
-- new parameter has a default, so old callers' named calls resolve to this one.
DROP FUNCTION IF EXISTS boundary_inference.upsert_video(text, text, integer, real, text, jsonb);

-- Insert or update a video. Guarantees: a video id belongs to one tenant forever (BI403); a crop
-- box that cannot be used on the frame is refused (BI400); an update replaces the whole
-- registration (a re-registered source gets its new fingerprint, or none).
CREATE OR REPLACE FUNCTION boundary_inference.upsert_video(
  p_id text,
  p_tenant_id text,
  p_frame_count integer,
  p_fps real,
  p_source_uri text DEFAULT NULL,
  p_crop_box jsonb DEFAULT NULL,
  p_width integer DEFAULT NULL,
  p_height integer DEFAULT NULL,
  p_codec text DEFAULT NULL,
  p_size_bytes bigint DEFAULT NULL,
  p_content_hash text DEFAULT NULL,
  p_etag text DEFAULT NULL,
  p_version_id text DEFAULT NULL,
  p_modified text DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  v videos;
  v_problem text;
BEGIN
  v_problem := _crop_problem(p_crop_box, p_width, p_height);
  IF v_problem IS NOT NULL THEN
    RAISE EXCEPTION 'video %: %', p_id, v_problem USING ERRCODE = 'BI400';
  END IF;
  INSERT INTO videos AS t (id, tenant_id, frame_count, fps, source_uri, crop_box, width, height,
                           codec, size_bytes, content_hash, etag, version_id, modified)
  VALUES (p_id, p_tenant_id, p_frame_count, p_fps, p_source_uri, p_crop_box, p_width, p_height,
          p_codec, p_size_bytes, p_content_hash, p_etag, p_version_id, p_modified)
  ON CONFLICT (id) DO UPDATE
    SET frame_count = EXCLUDED.frame_count,
        fps = EXCLUDED.fps,
        source_uri = EXCLUDED.source_uri,
        crop_box = EXCLUDED.crop_box,
        width = EXCLUDED.width,
        height = EXCLUDED.height,
        codec = EXCLUDED.codec,
        size_bytes = EXCLUDED.size_bytes,
        content_hash = EXCLUDED.content_hash,
        etag = EXCLUDED.etag,
        version_id = EXCLUDED.version_id,
        modified = EXCLUDED.modified,
        updated_at = now()
    WHERE t.tenant_id = EXCLUDED.tenant_id
  RETURNING * INTO v;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'video % belongs to another tenant', p_id USING ERRCODE = 'BI403';
  END IF;
  RETURN to_jsonb(v);
END $$;

-- The same as before; redefined here so that this file states what a video row returns now.
CREATE OR REPLACE FUNCTION boundary_inference.get_video(p_id text)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$ SELECT to_jsonb(v) FROM videos v WHERE v.id = p_id $$;

CREATE OR REPLACE FUNCTION boundary_inference.list_videos(
  p_tenant_id text DEFAULT NULL,
  p_limit integer DEFAULT 100
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY v.id), '[]'::jsonb)
  FROM (
    SELECT * FROM videos
     WHERE p_tenant_id IS NULL OR tenant_id = p_tenant_id
     ORDER BY id
     LIMIT greatest(coalesce(p_limit, 100), 0)
  ) v
$$;

-- ---------------------------------------------------------------------------------------------
-- Models
-- ---------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS boundary_inference.models (
  model_version text PRIMARY KEY
                CHECK (model_version ~ '^ckpt:[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
  format        text NOT NULL CHECK (length(format) BETWEEN 1 AND 100),
  size_bytes    bigint NOT NULL CHECK (size_bytes > 0),
  sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  file_name     text NOT NULL CHECK (length(file_name) BETWEEN 1 AND 200),
  -- Where the file was put: 'local:<directory>' and/or 'modal-volume:<name>'.
  locations     text[] NOT NULL DEFAULT '{}',
  details       jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Register a checkpoint. Guarantee: a model version names one content (sha256) forever; however
-- many callers race, one creates it (created=true), the same content again only adds its
-- location, and another content is refused (BI409).
CREATE OR REPLACE FUNCTION boundary_inference.register_model(
  p_model_version text,
  p_format text,
  p_size_bytes bigint,
  p_sha256 text,
  p_file_name text,
  p_location text DEFAULT NULL,
  p_details jsonb DEFAULT NULL,
  p_now timestamptz DEFAULT now()
) RETURNS jsonb LANGUAGE plpgsql
SET search_path = boundary_inference, pg_temp
AS $$
DECLARE
  m models;
BEGIN
  INSERT INTO models AS t (model_version, format, size_bytes, sha256, file_name, locations,
                           details, created_at, updated_at)
  VALUES (p_model_version, p_format, p_size_bytes, p_sha256, p_file_name,
          CASE WHEN p_location IS NULL THEN '{}'::text[] ELSE ARRAY[p_location] END,
          coalesce(p_details, '{}'::jsonb), p_now, p_now)
  ON CONFLICT (model_version) DO NOTHING
  RETURNING * INTO m;
  IF FOUND THEN
    RETURN to_jsonb(m) || jsonb_build_object('created', true);
  END IF;
  SELECT * INTO m FROM models WHERE model_version = p_model_version FOR UPDATE;
  IF m.sha256 IS DISTINCT FROM p_sha256 THEN
    RAISE EXCEPTION 'model % is already registered with another checkpoint (sha256 %...); a model'
                    ' version is a dedup key: register the new file under a new name',
                    p_model_version, left(m.sha256, 12) USING ERRCODE = 'BI409';
  END IF;
  IF p_location IS NOT NULL AND NOT p_location = ANY (m.locations) THEN
    UPDATE models SET locations = array_append(locations, p_location), updated_at = p_now
     WHERE model_version = p_model_version
    RETURNING * INTO m;
  END IF;
  RETURN to_jsonb(m) || jsonb_build_object('created', false);
END $$;

CREATE OR REPLACE FUNCTION boundary_inference.get_model(p_model_version text)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$ SELECT to_jsonb(m) FROM models m WHERE m.model_version = p_model_version $$;

CREATE OR REPLACE FUNCTION boundary_inference.list_models(p_limit integer DEFAULT 100)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(m) ORDER BY m.model_version), '[]'::jsonb)
  FROM (
    SELECT * FROM models ORDER BY model_version LIMIT greatest(coalesce(p_limit, 100), 0)
  ) m
$$;

-- ---------------------------------------------------------------------------------------------
-- Security: as in the core migration. Models are operator data: service_role only.
-- ---------------------------------------------------------------------------------------------

ALTER TABLE boundary_inference.models ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS service_role_all ON boundary_inference.models;
CREATE POLICY service_role_all ON boundary_inference.models FOR ALL
  TO service_role USING (true) WITH CHECK (true);
REVOKE ALL ON boundary_inference.models FROM public, anon, authenticated;
GRANT ALL ON boundary_inference.models TO service_role;

REVOKE EXECUTE ON FUNCTION
  boundary_inference._crop_problem(jsonb, integer, integer),
  boundary_inference.upsert_video(text, text, integer, real, text, jsonb, integer, integer, text,
                                  bigint, text, text, text, text),
  boundary_inference.get_video(text),
  boundary_inference.list_videos(text, integer),
  boundary_inference.register_model(text, text, bigint, text, text, text, jsonb, timestamptz),
  boundary_inference.get_model(text),
  boundary_inference.list_models(integer)
  FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION
  boundary_inference._crop_problem(jsonb, integer, integer),
  boundary_inference.upsert_video(text, text, integer, real, text, jsonb, integer, integer, text,
                                  bigint, text, text, text, text),
  boundary_inference.get_video(text),
  boundary_inference.list_videos(text, integer),
  boundary_inference.register_model(text, text, bigint, text, text, text, jsonb, timestamptz),
  boundary_inference.get_model(text),
  boundary_inference.list_models(integer)
  TO service_role;

NOTIFY pgrst, 'reload schema';
