-- Rejections by the start of their id, as the CLI shows it (`boundary-inference ack 3f2a9c1b`):
-- an operator types a prefix; the CLI acknowledges only a unique match.

CREATE OR REPLACE FUNCTION boundary_inference.find_rejections_by_prefix(
  p_prefix text,
  p_limit integer DEFAULT 10
) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = boundary_inference, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.created_at DESC, r.id), '[]'::jsonb)
  FROM (
    SELECT id, rejection_type, video_id, created_at, acknowledged
      FROM boundary_inference_rejections
     -- A uuid's text form is lower-case hex with dashes; only such a prefix can match.
     WHERE p_prefix ~ '^[0-9a-f-]{1,36}$'
       AND id::text LIKE p_prefix || '%'
     ORDER BY created_at DESC, id
     LIMIT greatest(coalesce(p_limit, 10), 0)
  ) r
$$;

REVOKE EXECUTE ON FUNCTION boundary_inference.find_rejections_by_prefix(text, integer)
  FROM public, anon, authenticated;
GRANT EXECUTE ON FUNCTION boundary_inference.find_rejections_by_prefix(text, integer) TO service_role;

NOTIFY pgrst, 'reload schema';
