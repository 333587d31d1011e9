-- The W3C traceparent of the request that asked for the job, then of the webhook that finished
-- it: the submitter and the finisher continue that trace, so one request is one trace.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
