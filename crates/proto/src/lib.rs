//! The gRPC contracts of Sonora's services, generated once from `proto/` at build time.
//!
//! Every service depends on this crate for the messages and the client and server stubs;
//! nothing here does IO of its own.

/// `sonora.tts.v1`: the voice catalogue and speech synthesis served by `tts-inference`.
pub mod tts {
    pub mod v1 {
        tonic::include_proto!("sonora.tts.v1");

        /// The longest text `Synthesize` accepts, in characters; the gateway refuses longer
        /// texts before calling.
        pub const MAX_TEXT_CHARS: usize = 4096;
        /// The fully qualified name of the service, for method policies.
        pub const SERVICE: &str = "sonora.tts.v1.TtsInference";
        /// Response metadata (headers) of `Synthesize`: how many characters of the text were
        /// skipped because the voice's language does not read their script (`0` when none).
        pub const SKIPPED_METADATA: &str = "sonora-skipped-characters";
        /// Metadata on an `INVALID_ARGUMENT` status of `Synthesize` saying which kind of refusal
        /// it is, when the gateway answers it with another HTTP status than 400.
        pub const REFUSAL_METADATA: &str = "sonora-refusal";
        /// [`REFUSAL_METADATA`] of a text mostly in scripts the voice's language does not read
        /// (the gateway answers 422).
        pub const REFUSAL_UNSUPPORTED_SCRIPT: &str = "unsupported-script";
    }
}

/// `sonora.delivery.v1`: partner endpoints and signed webhook delivery, served by
/// `delivery-worker`.
pub mod delivery {
    pub mod v1 {
        tonic::include_proto!("sonora.delivery.v1");

        /// The largest `payload_json` a published event may carry, in bytes.
        pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
        /// The most events one `PublishBatch` may carry.
        pub const MAX_BATCH_EVENTS: usize = 500;
        /// The fully qualified name of the service, for method policies.
        pub const SERVICE: &str = "sonora.delivery.v1.DeliveryService";

        /// An event type: dotted, 1 to 128 characters of lowercase letters, digits, `.`, `_` and
        /// `-` (`audio.sound_effect.completed`).
        pub fn is_event_type(text: &str) -> bool {
            (1..=128).contains(&text.len())
                && text
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        }

        /// A channel: 1 to 128 characters of letters, digits, `-`, `_`, `.` and `:`.
        pub fn is_channel(text: &str) -> bool {
            (1..=128).contains(&text.len())
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        }
    }
}

/// `sonora.audio.v1`: sound-effect and background-music jobs, served by `audio-generation`.
pub mod audio {
    pub mod v1 {
        tonic::include_proto!("sonora.audio.v1");

        /// The fully qualified name of the service, for method policies.
        pub const SERVICE: &str = "sonora.audio.v1.AudioGeneration";
    }
}

/// The event types Sonora publishes to partners, each with its JSON Schema and an example
/// (`proto/events/<type>.json`: `{"event_type", "schema", "example"}`), for the catalogue the
/// gateway serves and for the tests that check what the services send.
pub mod events {
    /// `(event type, its document)`.
    pub const CATALOGUE: &[(&str, &str)] = &[
        (
            "audio.sound_effect.completed",
            include_str!("../../../proto/events/audio.sound_effect.completed.json"),
        ),
        (
            "audio.background_music.completed",
            include_str!("../../../proto/events/audio.background_music.completed.json"),
        ),
        (
            "audio.job.failed",
            include_str!("../../../proto/events/audio.job.failed.json"),
        ),
        (
            "call.started",
            include_str!("../../../proto/events/call.started.json"),
        ),
        (
            "call.dtmf",
            include_str!("../../../proto/events/call.dtmf.json"),
        ),
        (
            "call.utterance.played",
            include_str!("../../../proto/events/call.utterance.played.json"),
        ),
        (
            "call.completed",
            include_str!("../../../proto/events/call.completed.json"),
        ),
    ];
}

/// `sonora.ingest.v1`: the inbox of inbound webhooks, served by `webhook-ingest`.
pub mod ingest {
    pub mod v1 {
        tonic::include_proto!("sonora.ingest.v1");

        /// The fully qualified name of the service, for method policies.
        pub const SERVICE: &str = "sonora.ingest.v1.WebhookIngest";
    }
}
