-- PostgreSQL refuses a NOTIFY payload of 8000 bytes or more, and the refusal fails the
-- statement that stored the events: about 45 distinct long facility_ids in one INSERT or COPY
-- were enough. The signal must never fail a write, so a payload that would not fit drops the
-- facility list, which listeners read as "invalidate everything" (as beyond 100 facilities).
CREATE OR REPLACE FUNCTION access_events_notify_written() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
    message text;
BEGIN
    SELECT jsonb_build_object(
               'rows', count(*),
               'min_time', min(time),
               'max_time', max(time),
               'facilities', CASE WHEN count(DISTINCT facility_id) > 100 THEN NULL
                                  ELSE coalesce(jsonb_agg(DISTINCT facility_id)
                                                FILTER (WHERE facility_id IS NOT NULL), '[]'::jsonb) END)
      INTO payload
      FROM new_rows;
    IF (payload->>'rows')::bigint = 0 THEN
        RETURN NULL;
    END IF;
    message := payload::text;
    -- 7000 leaves room below the 8000-byte limit for the channel name and any encoding overhead.
    IF octet_length(message) > 7000 THEN
        message := jsonb_set(payload, '{facilities}', 'null'::jsonb)::text;
    END IF;
    PERFORM pg_notify('access_events_written', message);
    RETURN NULL;
END
$$;
