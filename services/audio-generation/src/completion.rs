//! What Replicate's final answer does to a job, whether it came by webhook (`CompletePrediction`
//! from webhook-ingest) or by reconciliation: idempotent, so the second of two copies changes
//! nothing.
//!
//! A failed, canceled or aborted prediction fails the job (with its event) at once. A succeeded
//! one moves the job to `processing` with the output's URL; the finisher downloads, checks,
//! processes and stores it, since that takes seconds and must survive a restart.

use chrono::{DateTime, Utc};
use database::Pool;

use crate::{
    config::FinishSettings,
    events,
    jobs::{self, Job, JobStatus, JobsError},
    replicate::{Prediction, PredictionStatus},
};

/// Applies a prediction to its job; true when something changed.
pub async fn complete(
    pool: &Pool,
    job: &Job,
    prediction: &Prediction,
    finish: &FinishSettings,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    if !prediction.status.is_final() || job.status.is_final() || job.status == JobStatus::Processing
    {
        return Ok(false);
    }
    if let Some(recorded) = &job.prediction_id
        && recorded != &prediction.id
    {
        // A submission retried after a crash can leave a second prediction for the same job;
        // whichever finishes first finishes the job (both are signed by Replicate for it).
        tracing::info!(job_id = %job.id, prediction_id = %prediction.id, recorded = %recorded, "a second prediction of the job finished first");
    }
    let failure = match prediction.status {
        PredictionStatus::Succeeded => match prediction.output_url() {
            Some(url) => match allowed_output(url, finish) {
                Ok(()) => {
                    let changed =
                        jobs::begin_processing(pool, job.id, &prediction.id, url, now).await?;
                    if changed {
                        tracing::info!(job_id = %job.id, prediction_id = %prediction.id, "prediction succeeded; fetching its output");
                    }
                    return Ok(changed);
                }
                Err(problem) => problem,
            },
            None if prediction.data_removed => {
                "Replicate removed the output before it was fetched (data_removed)".to_owned()
            }
            None => "Replicate's prediction succeeded without an output".to_owned(),
        },
        PredictionStatus::Failed => format!(
            "Replicate failed the prediction: {}",
            prediction
                .error_text()
                .unwrap_or_else(|| "no reason given".to_owned())
        ),
        PredictionStatus::Canceled if job.cancel_requested => "canceled".to_owned(),
        PredictionStatus::Canceled => "Replicate canceled the prediction".to_owned(),
        PredictionStatus::Aborted => {
            "Replicate aborted the prediction before it started".to_owned()
        }
        PredictionStatus::Starting | PredictionStatus::Processing => return Ok(false),
    };
    let status = if job.cancel_requested {
        JobStatus::Canceled
    } else {
        JobStatus::Failed
    };
    fail(pool, job, status, &failure, Some(&prediction.id), now).await
}

/// Ends a job without audio, with its `audio.job.failed` event; false when it had settled.
pub async fn fail(
    pool: &Pool,
    job: &Job,
    status: JobStatus,
    error: &str,
    prediction_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    let event = events::failed(job, status, error, prediction_id, now)?;
    let changed =
        jobs::settle_failed(pool, job.id, status, error, prediction_id, event, now).await?;
    if changed {
        tracing::warn!(job_id = %job.id, status = status.as_str(), error, "job ended without audio");
    }
    Ok(changed)
}

/// Whether an output may be fetched: an http(s) URL always; in production `https` only, from a
/// host on `AUDIO_DOWNLOAD_ALLOWED_HOSTS` (Replicate serves files from `replicate.delivery`).
pub fn allowed_output(url: &str, finish: &FinishSettings) -> Result<(), String> {
    let parsed =
        settings::Url::parse(url).map_err(|_| "Replicate's output is not a URL".to_owned())?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    if !matches!(parsed.scheme(), "http" | "https") || host.is_empty() {
        return Err("Replicate's output is not an http(s) URL".to_owned());
    }
    if !finish.strict_downloads {
        return Ok(());
    }
    if parsed.scheme() != "https" {
        return Err("Replicate's output is not an https URL".to_owned());
    }
    // An address literal is checked here; a name is checked as it resolves (egress::guard).
    if let Err(refused) = finish.outbound.check_host(&parsed) {
        return Err(format!("Replicate's output is refused: {refused}"));
    }
    let allowed = finish
        .allowed_hosts
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(parent) => host.len() > parent.len() + 1 && host.ends_with(&format!(".{parent}")),
            None => &host == pattern,
        });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "Replicate's output is on {host}, which is not in AUDIO_DOWNLOAD_ALLOWED_HOSTS"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn finish(strict: bool) -> FinishSettings {
        FinishSettings {
            download_timeout: Duration::from_secs(1),
            download_max_bytes: 1024,
            download_attempts: 1,
            allowed_hosts: vec!["replicate.delivery".into(), "*.replicate.delivery".into()],
            strict_downloads: strict,
            outbound: std::sync::Arc::new(egress::AddressPolicy::new(
                if strict {
                    settings::Environment::Production
                } else {
                    settings::Environment::Development
                },
                Vec::new(),
            )),
            loudness_target: -16.0,
            fade_out: Duration::from_millis(50),
            format: audio_codec::AudioFormat::Mp3,
        }
    }

    #[test]
    fn production_fetches_only_from_replicate_over_https() {
        let strict = finish(true);
        assert!(allowed_output("https://replicate.delivery/pbxt/a.wav", &strict).is_ok());
        assert!(allowed_output("https://pbxt.replicate.delivery/a.wav", &strict).is_ok());
        for bad in [
            "http://replicate.delivery/a.wav",
            "https://replicate.delivery.evil.com/a.wav",
            "https://evilreplicate.delivery/a.wav",
            "https://169.254.169.254/latest/meta-data",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(allowed_output(bad, &strict).is_err(), "{bad}");
        }
        let relaxed = finish(false);
        assert!(allowed_output("http://127.0.0.1:8090/files/a.wav", &relaxed).is_ok());
        assert!(allowed_output("file:///etc/passwd", &relaxed).is_err());
    }
}
