//! The events a job publishes when it settles, through the outbox in the transaction that
//! settles it: `audio.sound_effect.completed`, `audio.background_music.completed` and
//! `audio.job.failed` (which also tells a cancel). Their schemas and examples are in
//! `proto/events/`, served in the gateway's catalogue.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::jobs::{Job, JobStatus, JobType, StoredAudio};

pub const SOUND_EFFECT_COMPLETED: &str = "audio.sound_effect.completed";
pub const BACKGROUND_MUSIC_COMPLETED: &str = "audio.background_music.completed";
pub const JOB_FAILED: &str = "audio.job.failed";

/// The gateway path that serves a job's audio.
pub fn audio_path(job: &Job) -> String {
    format!("/v1/audio/jobs/{}/audio", job.id)
}

/// The media type of a stored format.
pub fn content_type(format: &str) -> &'static str {
    match format {
        "wav" => "audio/wav",
        _ => "audio/mpeg",
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The event of a job whose audio is stored.
pub fn completed(
    job: &Job,
    audio: &StoredAudio,
    now: DateTime<Utc>,
) -> Result<outbox::Event, outbox::EventError> {
    let (event_type, payload) = completed_payload(job, audio, now);
    outbox::Event::new(job.tenant.clone(), job.id, event_type, &payload)
}

fn completed_payload(job: &Job, audio: &StoredAudio, now: DateTime<Utc>) -> (&'static str, Value) {
    let event_type = match job.job_type {
        JobType::SoundEffect => SOUND_EFFECT_COMPLETED,
        JobType::BackgroundMusic => BACKGROUND_MUSIC_COMPLETED,
    };
    let payload = json!({
        "event_type": event_type,
        "job_id": job.id,
        "type": job.job_type.as_str(),
        "status": "succeeded",
        "prompt": job.prompt,
        "duration_seconds": job.duration_seconds,
        "prediction_id": job.prediction_id,
        "audio": {
            "format": audio.format,
            "content_type": content_type(&audio.format),
            "size_bytes": audio.size,
            "duration_seconds": audio.duration_seconds,
            "sha256": audio.sha256,
            "path": audio_path(job),
        },
        "volume_level": job.volume_level,
        "created_at": time(job.created_at),
        "finished_at": time(now),
    });
    (event_type, payload)
}

/// The event of a job that ended without audio (`status` failed or canceled).
pub fn failed(
    job: &Job,
    status: JobStatus,
    error: &str,
    prediction_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<outbox::Event, outbox::EventError> {
    let payload = failed_payload(job, status, error, prediction_id, now);
    outbox::Event::new(job.tenant.clone(), job.id, JOB_FAILED, &payload)
}

fn failed_payload(
    job: &Job,
    status: JobStatus,
    error: &str,
    prediction_id: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "event_type": JOB_FAILED,
        "job_id": job.id,
        "type": job.job_type.as_str(),
        "status": status.as_str(),
        "prompt": job.prompt,
        "duration_seconds": job.duration_seconds,
        "prediction_id": prediction_id.or(job.prediction_id.as_deref()),
        "error": error,
        "created_at": time(job.created_at),
        "finished_at": time(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ids::{JobId, Tenant};

    fn job(job_type: JobType) -> Job {
        Job {
            id: JobId::new(),
            tenant: Tenant::parse("acme").unwrap(),
            job_type,
            status: JobStatus::Processing,
            prompt: "rain".into(),
            duration_seconds: 2.5,
            seed: None,
            volume_level: Some(0.3),
            error: None,
            prediction_id: Some("p1".into()),
            attempts: 0,
            cancel_requested: false,
            output_url: None,
            audio: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            submitted_at: None,
            traceparent: None,
            completed_at: None,
            finished_at: None,
            event_id: None,
        }
    }

    /// The catalogue's schema lists exactly the fields sent: a field added here and not there
    /// (or the reverse) fails this test.
    fn assert_matches_catalogue(payload: &Value, event_type: &str) {
        let (_, document) = sonora_proto::events::CATALOGUE
            .iter()
            .find(|(name, _)| *name == event_type)
            .expect("registered");
        let document: Value = serde_json::from_str(document).unwrap();
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let mut required: Vec<String> = document["schema"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        required.sort();
        assert_eq!(keys(payload), required, "{event_type}");
        assert_eq!(keys(&document["example"]), required, "{event_type} example");
        if let Some(audio) = payload.get("audio") {
            assert_eq!(
                keys(audio),
                keys(&document["schema"]["properties"]["audio"]["properties"])
            );
        }
    }

    #[test]
    fn events_are_what_the_catalogue_says() {
        let audio = StoredAudio {
            key: "acme/job.mp3".into(),
            format: "mp3".into(),
            size: 10,
            duration_seconds: 2.5,
            sha256: "0".repeat(64),
        };
        let effect = job(JobType::SoundEffect);
        let (event_type, payload) = completed_payload(&effect, &audio, Utc::now());
        assert_eq!(event_type, SOUND_EFFECT_COMPLETED);
        assert_matches_catalogue(&payload, SOUND_EFFECT_COMPLETED);
        let music = job(JobType::BackgroundMusic);
        let (event_type, payload) = completed_payload(&music, &audio, Utc::now());
        assert_eq!(event_type, BACKGROUND_MUSIC_COMPLETED);
        assert_matches_catalogue(&payload, BACKGROUND_MUSIC_COMPLETED);
        let payload = failed_payload(&effect, JobStatus::Failed, "boom", None, Utc::now());
        assert_matches_catalogue(&payload, JOB_FAILED);
        assert!(completed(&effect, &audio, Utc::now()).is_ok());
        assert!(failed(&effect, JobStatus::Canceled, "canceled", None, Utc::now()).is_ok());
    }
}
