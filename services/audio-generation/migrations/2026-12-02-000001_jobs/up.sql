-- Sound-effect and background-music jobs. A job is recorded (queued) when a client asks for it;
-- a background submitter creates its Replicate prediction, and Replicate's webhook finishes it.
CREATE TABLE jobs (
    -- `job_…`, time-ordered: listing newest first is listing by id.
    id               TEXT COLLATE "C" PRIMARY KEY,
    tenant           TEXT NOT NULL,
    job_type         TEXT NOT NULL CHECK (job_type IN ('sound_effect', 'background_music')),
    status           TEXT NOT NULL CHECK (status IN ('queued', 'submitted', 'succeeded', 'failed', 'canceled')),
    prompt           TEXT NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    seed             BIGINT,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_tenant ON jobs (tenant, id DESC);
CREATE INDEX jobs_queued ON jobs (created_at) WHERE status = 'queued';
