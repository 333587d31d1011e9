-- Where the delivery's current run of the retry schedule started: the attempt count when it was
-- enqueued (0), redriven or retried by hand. The delay after a failed attempt is the schedule's
-- entry for the attempt's place in the run (attempt_count - schedule_offset), so a redriven
-- dead letter waits between attempts again instead of spending them all at once.
ALTER TABLE deliveries
    ADD COLUMN schedule_offset INTEGER NOT NULL DEFAULT 0 CHECK (schedule_offset >= 0);
