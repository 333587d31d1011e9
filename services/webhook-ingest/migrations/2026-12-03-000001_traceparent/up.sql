-- The W3C traceparent of the request that delivered the event (for a Replicate webhook, the
-- trace of the job it finishes): dispatching continues that trace.
ALTER TABLE inbox ADD COLUMN traceparent TEXT;
