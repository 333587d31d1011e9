-- The W3C traceparent of the work that enqueued the event; handed to delivery-worker with it, so
-- the deliveries join that trace.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
