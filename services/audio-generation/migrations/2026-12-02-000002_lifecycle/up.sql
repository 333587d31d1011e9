-- A job's whole life: submitted to Replicate by a background submitter (with retries and a
-- budget shared by every replica), finished by Replicate's webhook (or by reconciliation when
-- the webhook is overdue), then downloaded, processed and stored by a background finisher.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'submitted', 'processing', 'succeeded', 'failed', 'canceled'));

ALTER TABLE jobs
    -- The level of an effect mixed under speech (SOUND_EFFECTS_VOLUME_LEVEL when it was made).
    ADD COLUMN volume_level     DOUBLE PRECISION,
    -- What was sent to Replicate: the model version and the input.
    ADD COLUMN model_version    TEXT,
    ADD COLUMN input            JSONB,
    ADD COLUMN prediction_id    TEXT,
    -- Work in progress (submission or finishing): tries so far, when to try next, and until
    -- when a replica holds it (a claim by a killed process expires).
    ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at  TIMESTAMPTZ,
    ADD COLUMN lease_until      TIMESTAMPTZ,
    ADD COLUMN last_error       TEXT,
    -- A cancel asked while the prediction was being created: the submitter cancels it.
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN submitted_at     TIMESTAMPTZ,
    -- When Replicate's answer (webhook or reconciliation) arrived, and the output it named.
    ADD COLUMN completed_at     TIMESTAMPTZ,
    ADD COLUMN output_url       TEXT,
    ADD COLUMN finished_at      TIMESTAMPTZ,
    -- The stored audio: metadata here, the bytes in the audio store.
    ADD COLUMN audio_key        TEXT,
    ADD COLUMN audio_format     TEXT,
    ADD COLUMN audio_size       BIGINT,
    ADD COLUMN audio_duration   DOUBLE PRECISION,
    ADD COLUMN audio_sha256     TEXT;

DROP INDEX jobs_queued;
-- The submitter's and the finisher's queues, and the reconciliation sweep.
CREATE INDEX jobs_to_submit ON jobs (next_attempt_at NULLS FIRST, created_at) WHERE status = 'queued';
CREATE INDEX jobs_to_finish ON jobs (next_attempt_at NULLS FIRST, completed_at) WHERE status = 'processing';
CREATE INDEX jobs_waiting ON jobs (submitted_at) WHERE status = 'submitted';

-- Prediction creations per minute across every replica (Replicate allows 600 a minute).
CREATE TABLE submission_budget (
    minute TIMESTAMPTZ PRIMARY KEY,
    used   INTEGER NOT NULL
);

-- Wakes the submitter and the finisher of every replica when work arrives.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('audio_jobs_' || TG_TABLE_SCHEMA, NEW.status);
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status IN ('queued', 'processing')) EXECUTE FUNCTION jobs_notify();
