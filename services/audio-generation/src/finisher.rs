//! The last step of a job: download the output Replicate made, check it is audio by decoding
//! it, trim it to the requested duration with a short fade-out, normalise its loudness, encode
//! it to the stored format, store it where every replica can read it, then settle the job and
//! publish its event in one transaction.
//!
//! Jobs wait for this in the `processing` status, claimed with a lease, so a replica killed
//! half-way leaves the job to another. A download that fails is retried with backoff (a
//! truncated body counts as failed); an output that is not audio, too large or gone fails the
//! job with the reason.

use std::{sync::Arc, time::Duration};

use audio_codec::process::{self, DecodeLimits};
use blob_store::BlobStore;
use chrono::Utc;
use database::Pool;
use futures::StreamExt as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::{io::AsyncWriteExt as _, sync::Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    completion,
    config::{FinishSettings, WorkSettings},
    events,
    jobs::{self, Job, JobStatus, Queue, StoredAudio},
};

/// How many jobs one replica processes at once: decoding and encoding take a core each.
const CONCURRENCY: usize = 2;
/// Audio decoded beyond the requested length by more than this is refused: it bounds the
/// memory a hostile or broken output can take (5 min of 48 kHz stereo is about 115 MB).
const DECODE_SLACK: Duration = Duration::from_secs(60);
/// The sample peak stored audio may reach after normalising.
const PEAK_CEILING_DBFS: f64 = -1.0;

/// Why a step failed: worth another try, not the job's fault (the store is away: wait without
/// using a try, while Replicate keeps the output for an hour), or never going to work.
#[derive(Debug)]
enum Failure {
    Retry(String),
    Wait(String),
    Permanent(String),
}

/// How long a job waits for the audio store to come back before it is tried again.
const STORE_WAIT: chrono::Duration = chrono::Duration::seconds(10);

/// `audio_finished_total{type,outcome}` and `audio_finish_seconds{type}`.
#[derive(Clone)]
pub struct FinishMetrics {
    finished: IntCounterVec,
    seconds: HistogramVec,
}

impl FinishMetrics {
    pub fn register(registry: &Registry) -> Self {
        let finished = IntCounterVec::new(
            Opts::new(
                "audio_finished_total",
                "Outputs fetched and processed, by job type and outcome (stored, retried, waiting for the store, failed).",
            ),
            &["type", "outcome"],
        )
        .expect("a valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "audio_finish_seconds",
                "Time to download, process and store one output.",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["type"],
        )
        .expect("a valid metric");
        registry
            .register(Box::new(finished.clone()))
            .expect("registered once");
        registry
            .register(Box::new(seconds.clone()))
            .expect("registered once");
        Self { finished, seconds }
    }
}

/// Finishes processing jobs.
#[derive(Clone)]
pub struct Finisher {
    pub pool: Pool,
    pub store: BlobStore,
    pub http: reqwest::Client,
    pub work: WorkSettings,
    pub metrics: FinishMetrics,
}

/// The HTTP client for outputs: no redirects (Replicate serves files directly, and a redirect
/// could lead off the allow-list), the whole download bounded by `AUDIO_DOWNLOAD_TIMEOUT`, and
/// every host name checked as it resolves (no private address in production, whatever the name).
pub fn download_client(finish: &FinishSettings) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = egress::guard(reqwest::Client::builder(), &finish.outbound);
    builder
        .timeout(finish.download_timeout)
        .connect_timeout(finish.download_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the TLS provider is installed")
}

/// The wait before download try `attempts + 1`: 1 s doubling to at most a minute.
fn retry_delay(attempts: i32) -> chrono::Duration {
    chrono::Duration::seconds((1_i64 << attempts.clamp(0, 6)).min(60))
}

/// Where a job's audio is stored.
pub fn storage_key(job: &Job, extension: &str) -> String {
    format!("{}/{}.{extension}", job.tenant, job.id)
}

impl Finisher {
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        while let Some(claimed) = crate::submitter::next_batch(
            &self.pool,
            Queue::Finish,
            CONCURRENCY,
            (self.work.lease, self.work.poll_interval),
            &wake,
            &shutdown,
        )
        .await
        {
            futures::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |job| self.finish(job))
                .await;
        }
    }

    async fn finish(&self, job: Job) {
        // Finishing continues the trace of the webhook (or, reconciled, of the creating request).
        let span = tracing::info_span!("job.finish", job_id = %job.id);
        telemetry::propagation::adopt_traceparent(&span, job.traceparent.as_deref());
        self.finish_traced(job).instrument(span).await;
    }

    async fn finish_traced(&self, job: Job) {
        let started = std::time::Instant::now();
        let outcome = self.try_finish(&job).await;
        let label = job.job_type.as_str();
        self.metrics
            .seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        let now = Utc::now();
        let recorded = match outcome {
            Ok(()) => {
                self.metrics
                    .finished
                    .with_label_values(&[label, "stored"])
                    .inc();
                Ok(())
            }
            Err(Failure::Wait(problem)) => {
                self.metrics
                    .finished
                    .with_label_values(&[label, "waiting"])
                    .inc();
                tracing::warn!(job_id = %job.id, %problem, "the audio store is not available; the job waits");
                jobs::retry_later(&self.pool, job.id, now + STORE_WAIT, &problem, false).await
            }
            Err(Failure::Retry(problem))
                if job.attempts + 1 < self.work.finish.download_attempts =>
            {
                self.metrics
                    .finished
                    .with_label_values(&[label, "retried"])
                    .inc();
                tracing::warn!(job_id = %job.id, attempt = job.attempts + 1, %problem, "cannot finish the job yet; retrying");
                jobs::retry_later(
                    &self.pool,
                    job.id,
                    now + retry_delay(job.attempts),
                    &problem,
                    true,
                )
                .await
            }
            Err(Failure::Retry(problem)) => {
                self.metrics
                    .finished
                    .with_label_values(&[label, "failed"])
                    .inc();
                let error = format!(
                    "the output could not be fetched and stored after {} tries: {problem}",
                    job.attempts + 1
                );
                completion::fail(&self.pool, &job, JobStatus::Failed, &error, None, now)
                    .await
                    .map(drop)
            }
            Err(Failure::Permanent(problem)) => {
                self.metrics
                    .finished
                    .with_label_values(&[label, "failed"])
                    .inc();
                completion::fail(&self.pool, &job, JobStatus::Failed, &problem, None, now)
                    .await
                    .map(drop)
            }
        };
        if let Err(error) = recorded {
            // The lease runs out and another try records it.
            tracing::warn!(job_id = %job.id, %error, "cannot record the job's outcome");
        }
    }

    async fn try_finish(&self, job: &Job) -> Result<(), Failure> {
        let finish = &self.work.finish;
        let url = job
            .output_url
            .as_deref()
            .ok_or_else(|| Failure::Permanent("Replicate's prediction has no output".to_owned()))?;
        completion::allowed_output(url, finish).map_err(Failure::Permanent)?;
        let file = self.download(url).await?;
        let requested = Duration::from_secs_f64(job.duration_seconds);
        let (format, fade_out, target) = (finish.format, finish.fade_out, finish.loudness_target);
        let path = file.path().to_owned();
        let processed = tokio::task::spawn_blocking(move || {
            let limits = DecodeLimits {
                max_duration: requested + DECODE_SLACK,
            };
            let mut decoded = process::decode_file(&path, limits).map_err(|e| {
                Failure::Permanent(format!("Replicate's output is not usable audio: {e}"))
            })?;
            // Effects are made in whole seconds and cut to the request; music is cut too, so
            // that a track asked for 12.5 s is 12.5 s.
            process::trim(&mut decoded, requested, fade_out);
            let normalized = process::normalize(&mut decoded, target, PEAK_CEILING_DBFS);
            if normalized.loudness_before.is_none() {
                return Err(Failure::Permanent(
                    "Replicate's output is silent".to_owned(),
                ));
            }
            let duration = decoded.duration_seconds();
            let bytes = process::encode(&decoded, format)
                .map_err(|e| Failure::Permanent(format!("cannot encode the audio: {e}")))?;
            Ok::<_, Failure>((bytes, duration))
        })
        .await
        .map_err(|_| Failure::Retry("processing the audio stopped unexpectedly".to_owned()))?;
        drop(file);
        let (bytes, duration_seconds) = processed?;
        let extension = format.name();
        let key = storage_key(job, extension);
        let stored = self
            .store
            .put_bytes(&key, bytes)
            .await
            .map_err(|e| Failure::Wait(e.to_string()))?;
        let audio = StoredAudio {
            key: key.clone(),
            format: extension.to_owned(),
            size: stored.size,
            duration_seconds,
            sha256: stored.sha256,
        };
        let now = Utc::now();
        let event =
            events::completed(job, &audio, now).map_err(|e| Failure::Permanent(e.to_string()))?;
        let settled = jobs::settle_succeeded(&self.pool, job.id, &audio, event, now)
            .await
            .map_err(|e| Failure::Wait(e.to_string()))?;
        if settled {
            tracing::info!(job_id = %job.id, size = audio.size, duration_s = duration_seconds, "audio stored");
        } else {
            // Canceled while it was being processed: the file has no job to serve it.
            tracing::info!(job_id = %job.id, "job settled meanwhile; its file is removed");
            if let Err(error) = self.store.delete(&key).await {
                tracing::warn!(job_id = %job.id, %error, "cannot remove the unwanted file");
            }
        }
        Ok(())
    }

    /// Downloads the output into a temporary file, streaming, refusing it once it passes the
    /// size limit and treating a body shorter than its `Content-Length` as a failed try.
    async fn download(&self, url: &str) -> Result<tempfile::NamedTempFile, Failure> {
        let finish = &self.work.finish;
        let response = self.http.get(url).send().await.map_err(|e| {
            Failure::Retry(format!("cannot download the output: {}", e.without_url()))
        })?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 | 410 => {
                return Err(Failure::Permanent(
                    "Replicate no longer has the output (removed after its retention)".to_owned(),
                ));
            }
            _ => {
                return Err(Failure::Retry(format!(
                    "the output's host answered {status}"
                )));
            }
        }
        let max = finish.download_max_bytes;
        let expected = response.content_length();
        if expected.is_some_and(|len| len > max) {
            return Err(Failure::Permanent(format!(
                "the output is larger than AUDIO_DOWNLOAD_MAX_BYTES ({max} bytes)"
            )));
        }
        let file = tempfile::NamedTempFile::new()
            .map_err(|e| Failure::Retry(format!("cannot create a temporary file: {e}")))?;
        let mut writer = tokio::fs::File::from_std(
            file.reopen()
                .map_err(|e| Failure::Retry(format!("cannot open the temporary file: {e}")))?,
        );
        let mut received: u64 = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::Retry(format!("the download broke off: {}", e.without_url()))
            })?;
            received += chunk.len() as u64;
            if received > max {
                return Err(Failure::Permanent(format!(
                    "the output is larger than AUDIO_DOWNLOAD_MAX_BYTES ({max} bytes)"
                )));
            }
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| Failure::Retry(format!("cannot write the temporary file: {e}")))?;
        }
        writer
            .flush()
            .await
            .map_err(|e| Failure::Retry(format!("cannot write the temporary file: {e}")))?;
        if let Some(expected) = expected
            && received != expected
        {
            return Err(Failure::Retry(format!(
                "the download broke off after {received} of {expected} bytes"
            )));
        }
        if received == 0 {
            return Err(Failure::Retry("the output was empty".to_owned()));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_back_off_to_a_minute() {
        assert_eq!(retry_delay(0), chrono::Duration::seconds(1));
        assert_eq!(retry_delay(1), chrono::Duration::seconds(2));
        assert_eq!(retry_delay(10), chrono::Duration::seconds(60));
    }
}
