DROP TRIGGER jobs_notify ON jobs;
DROP FUNCTION jobs_notify();
DROP TABLE submission_budget;
DROP INDEX jobs_to_submit;
DROP INDEX jobs_to_finish;
DROP INDEX jobs_waiting;
CREATE INDEX jobs_queued ON jobs (created_at) WHERE status = 'queued';
ALTER TABLE jobs
    DROP COLUMN volume_level, DROP COLUMN model_version, DROP COLUMN input,
    DROP COLUMN prediction_id, DROP COLUMN attempts, DROP COLUMN next_attempt_at,
    DROP COLUMN lease_until, DROP COLUMN last_error, DROP COLUMN cancel_requested,
    DROP COLUMN submitted_at, DROP COLUMN completed_at, DROP COLUMN output_url,
    DROP COLUMN finished_at, DROP COLUMN audio_key, DROP COLUMN audio_format,
    DROP COLUMN audio_size, DROP COLUMN audio_duration, DROP COLUMN audio_sha256;
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'submitted', 'succeeded', 'failed', 'canceled'));
