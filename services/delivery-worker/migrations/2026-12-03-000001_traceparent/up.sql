-- The W3C traceparent the publisher sent with the event: every attempt to deliver it continues
-- that trace and sends it to the partner in the `traceparent` header.
ALTER TABLE messages ADD COLUMN traceparent TEXT;
