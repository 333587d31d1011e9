-- The voice catalogue clients see: each voice tts-inference has loaded gets a stable UUID (derived
-- from its slug, so every installation gives a voice the same one) that the old clients send as
-- `voice_id`. The gateway reconciles it with tts-inference's ListVoices: a new voice appears by
-- itself, a removed one is marked unavailable (never deleted: clients may still hold its id). An
-- operator may rename or disable a voice (`gateway voices`); reconciliation never undoes that.
CREATE TABLE voices (
    id            UUID PRIMARY KEY,
    slug          TEXT COLLATE "C" NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    language      TEXT NOT NULL,
    sample_rate   INTEGER NOT NULL,
    quality       TEXT NOT NULL,
    -- [{"id": 0, "name": "..."}]
    speakers      JSONB NOT NULL DEFAULT '[]',
    is_default    BOOLEAN NOT NULL DEFAULT FALSE,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    available     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
