-- Every statement that stores access events (the event processor, uploads, a manual INSERT)
-- announces it on the channel `access_events_written`, once per statement and only at commit.
-- Analytics listens and invalidates exactly the cached analyses the new rows can change
-- (by facility), so no writer has to know about the cache. Statement-level with a transition
-- table: one notification per batch, not per row, and no row locks shared between writers.
CREATE OR REPLACE FUNCTION access_events_notify_written() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
BEGIN
    SELECT jsonb_build_object(
               'rows', count(*),
               'min_time', min(time),
               'max_time', max(time),
               -- beyond 100 facilities the list is dropped: listeners then invalidate everything
               'facilities', CASE WHEN count(DISTINCT facility_id) > 100 THEN NULL
                                  ELSE coalesce(jsonb_agg(DISTINCT facility_id)
                                                FILTER (WHERE facility_id IS NOT NULL), '[]'::jsonb) END)
      INTO payload
      FROM new_rows;
    IF (payload->>'rows')::bigint > 0 THEN
        PERFORM pg_notify('access_events_written', payload::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS access_events_written ON access_events;
CREATE TRIGGER access_events_written
    AFTER INSERT ON access_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION access_events_notify_written();
