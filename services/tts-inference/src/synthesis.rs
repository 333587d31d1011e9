//! Speech synthesis off the async executor: a fixed pool of inference threads behind a bounded
//! queue, the loaded voices, and the per-request job that synthesises the text part by part
//! (`voice::Voice::synthesize_parts`: pieces of the text, each decoded in windows), encodes each
//! part and hands the bytes to the gRPC stream as soon as they exist.
//!
//! A full queue is refused at once (`RESOURCE_EXHAUSTED`) rather than letting latency grow
//! without bound. A job stops after the part in progress when its client goes away (the
//! stream's receiver is dropped).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Instant,
};

use audio_codec::{AudioFormat, Encoder};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use sonora_proto::tts::v1::{SynthesizeResponse, WordTiming};
use tokio::sync::mpsc;
use tonic::Status;
use voice::{Scales, Voice};

/// The longest text one request may carry, in characters.
pub use sonora_proto::tts::v1::MAX_TEXT_CHARS;

type Job = Box<dyn FnOnce() + Send>;

/// The service's synthesis metrics.
#[derive(Clone)]
pub struct SynthesisMetrics {
    generation: Histogram,
    real_time_factor: Histogram,
    first_audio: Histogram,
    queue_depth: IntGauge,
    model_loaded: IntGaugeVec,
    cancelled: IntCounter,
}

impl SynthesisMetrics {
    pub fn model_loaded_gauge(&self) -> IntGaugeVec {
        self.model_loaded.clone()
    }

    pub fn queue_depth_gauge(&self) -> IntGauge {
        self.queue_depth.clone()
    }

    pub fn register(registry: &Registry) -> Self {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric")
        };
        let metrics = Self {
            generation: histogram(
                "tts_generation_duration_seconds",
                "Time to synthesise and encode a whole request.",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            real_time_factor: histogram(
                "tts_real_time_factor",
                "Synthesis time divided by the duration of the audio made, per request.",
                vec![0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0],
            ),
            first_audio: histogram(
                "tts_time_to_first_audio_seconds",
                "From the request's arrival to its first audio bytes.",
                vec![0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            queue_depth: IntGauge::new("tts_queue_depth", "Synthesis jobs waiting for a thread.")
                .expect("valid metric"),
            model_loaded: IntGaugeVec::new(
                Opts::new("tts_model_loaded", "1 for each voice loaded in memory."),
                &["voice"],
            )
            .expect("valid metric"),
            cancelled: IntCounter::new(
                "tts_cancelled_total",
                "Requests stopped early because the client went away.",
            )
            .expect("valid metric"),
        };
        for metric in [
            Box::new(metrics.generation.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.real_time_factor.clone()),
            Box::new(metrics.first_audio.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.model_loaded.clone()),
            Box::new(metrics.cancelled.clone()),
        ] {
            registry.register(metric).expect("unique metric names");
        }
        metrics
    }
}

/// A fixed set of threads taking jobs from a bounded queue.
pub struct InferencePool {
    queue: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    gauge: IntGauge,
}

/// How long the pool must have had nothing to do before the allocator's free memory is given
/// back to the system ([`voice::release_free_memory`]). Synthesis keeps freed memory for reuse
/// (see [`voice::prepare_process`]); giving it back after every request would make the next one
/// fault its pages in again, so it is given back only after a pause.
pub const IDLE_BEFORE_TRIM: std::time::Duration = std::time::Duration::from_secs(2);

impl InferencePool {
    pub fn new(threads: usize, capacity: usize, gauge: IntGauge) -> Self {
        let (queue, jobs) = sync_channel::<Job>(capacity);
        let jobs: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(jobs));
        let waiting = Arc::new(AtomicUsize::new(0));
        // Jobs running, and whether any has finished since memory was last given back.
        let activity = Arc::new((
            AtomicUsize::new(0),
            std::sync::atomic::AtomicBool::new(false),
        ));
        for index in 0..threads.max(1) {
            let (jobs, waiting, gauge, activity) = (
                Arc::clone(&jobs),
                Arc::clone(&waiting),
                gauge.clone(),
                Arc::clone(&activity),
            );
            std::thread::Builder::new()
                .name(format!("tts-inference-{index}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job, never while running one.
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let left = waiting.fetch_sub(1, Ordering::SeqCst) - 1;
                        gauge.set(i64::try_from(left).unwrap_or(i64::MAX));
                        activity.0.fetch_add(1, Ordering::SeqCst);
                        job();
                        activity.1.store(true, Ordering::SeqCst);
                        activity.0.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .expect("threads can be started");
        }
        // Gives freed memory back once the pool has been idle for IDLE_BEFORE_TRIM. It stops
        // with the pool (when the queue's sender is gone, `waiting` alone holds a reference).
        {
            let (waiting, activity) = (Arc::downgrade(&waiting), Arc::clone(&activity));
            std::thread::Builder::new()
                .name("tts-inference-trim".into())
                .spawn(move || {
                    let mut idle_since = None;
                    loop {
                        std::thread::sleep(IDLE_BEFORE_TRIM / 4);
                        let Some(waiting) = waiting.upgrade() else {
                            return;
                        };
                        let idle = waiting.load(Ordering::SeqCst) == 0
                            && activity.0.load(Ordering::SeqCst) == 0;
                        drop(waiting);
                        if !idle {
                            idle_since = None;
                            continue;
                        }
                        let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() >= IDLE_BEFORE_TRIM
                            && activity.1.swap(false, Ordering::SeqCst)
                        {
                            voice::release_free_memory();
                        }
                    }
                })
                .expect("threads can be started");
        }
        Self {
            queue,
            waiting,
            gauge,
        }
    }

    /// Queues `job`, or refuses it at once when the queue is full.
    pub fn try_submit(&self, job: Job) -> Result<(), Status> {
        let depth = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        match self.queue.try_send(job) {
            Ok(()) => {
                self.gauge.set(i64::try_from(depth).unwrap_or(i64::MAX));
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(Status::resource_exhausted(
                    "the synthesis queue is full; retry after a short wait",
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(Status::unavailable("the synthesis pool has stopped"))
            }
        }
    }
}

/// The voices held in memory, loaded on first use (the default one at start).
pub struct Voices {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Voice>>>,
    failures: Mutex<HashMap<String, String>>,
    gauge: IntGaugeVec,
}

impl Voices {
    pub fn new(dir: PathBuf, gauge: IntGaugeVec) -> Self {
        Self {
            dir,
            loaded: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    /// The voice `id`, loading it if needed. Blocks: call it on an inference thread.
    pub fn get(&self, id: &str) -> Result<Arc<Voice>, String> {
        if let Some(voice) = self.loaded.lock().expect("not poisoned").get(id) {
            return Ok(Arc::clone(voice));
        }
        let path = self.dir.join(format!("{id}.onnx"));
        let started = Instant::now();
        match Voice::load(&path) {
            Ok(voice) => {
                tracing::info!(voice = id, elapsed = ?started.elapsed(), "voice loaded");
                let voice = Arc::new(voice);
                self.loaded
                    .lock()
                    .expect("not poisoned")
                    .insert(id.to_owned(), Arc::clone(&voice));
                self.failures.lock().expect("not poisoned").remove(id);
                self.gauge.with_label_values(&[id]).set(1);
                Ok(voice)
            }
            Err(error) => {
                let message = format!("voice {id} cannot be loaded: {error}");
                tracing::error!(voice = id, %error, "voice load failed");
                self.failures
                    .lock()
                    .expect("not poisoned")
                    .insert(id.to_owned(), message.clone());
                Err(message)
            }
        }
    }

    /// Whether `id` is in memory; the error says why not.
    pub fn loaded(&self, id: &str) -> Result<(), String> {
        if self.loaded.lock().expect("not poisoned").contains_key(id) {
            return Ok(());
        }
        Err(self
            .failures
            .lock()
            .expect("not poisoned")
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("voice {id} is loading")))
    }
}

/// One request, validated.
#[derive(Debug, Clone)]
pub struct Request {
    /// The text after the front end (`voice::text::prepare`), as steps (one for plain text;
    /// text, phonemes and silences for SSML): never without speech.
    pub steps: Vec<voice::Step>,
    /// Characters of the text skipped (scripts the voice's language does not read).
    pub skipped: usize,
    pub limits: voice::Limits,
    pub voice: String,
    pub speaker: Option<u32>,
    pub length_scale: f32,
    pub noise_scale: Option<f32>,
    pub noise_w: Option<f32>,
    pub format: AudioFormat,
    pub sample_rate: Option<u32>,
    /// Whether each message carries the words its audio completes.
    pub timestamps: bool,
    /// For word timings of plain text: its words as written, which the spoken words are turned
    /// back into (`3` rather than `three`); `None` for SSML, whose timings name the words spoken.
    pub written: Option<Vec<voice::text::Written>>,
    pub received: Instant,
}

/// Runs one request on the calling (inference) thread, sending each piece of the stream to `tx`.
pub fn run(
    voices: &Voices,
    metrics: &SynthesisMetrics,
    request: Request,
    tx: &mpsc::Sender<Result<SynthesizeResponse, Status>>,
) {
    let send = |item| tx.blocking_send(item).is_ok();
    let voice = match voices.get(&request.voice) {
        Ok(voice) => voice,
        Err(message) => {
            send(Err(Status::unavailable(message)));
            return;
        }
    };
    if let Some(speaker) = request.speaker
        && usize::try_from(speaker).unwrap_or(usize::MAX) >= voice.config().num_speakers.max(1)
    {
        send(Err(Status::not_found(format!(
            "voice {} has no speaker {speaker}",
            request.voice
        ))));
        return;
    }
    let defaults = voice.default_scales();
    let scales = Scales {
        noise_scale: request.noise_scale.unwrap_or(defaults.noise_scale),
        length_scale: request.length_scale,
        noise_w: request.noise_w.unwrap_or(defaults.noise_w),
    };
    let mut encoder = match Encoder::new(request.format, voice.sample_rate(), request.sample_rate) {
        Ok(encoder) => encoder,
        Err(error) => {
            send(Err(Status::invalid_argument(error.to_string())));
            return;
        }
    };
    let (content_type, sample_rate) = (
        request.format.content_type().to_owned(),
        encoder.output_rate(),
    );
    let message = |audio: Vec<u8>,
                   sentence_index: u32,
                   audio_seconds: Option<f64>,
                   words: Vec<WordTiming>| SynthesizeResponse {
        audio,
        sentence_index,
        content_type: content_type.clone(),
        sample_rate,
        done: audio_seconds.is_some(),
        audio_seconds: audio_seconds.unwrap_or_default(),
        words,
    };
    let mut parts = match voice.synthesize_steps(
        request.steps,
        request.speaker,
        scales,
        request.limits,
        request.timestamps,
    ) {
        Ok(parts) => parts,
        Err(error) => {
            send(Err(status_of(error)));
            return;
        }
    };
    let mut audio_seconds = 0.0;
    // Whether any part was speech (SSML breaks alone are silence, never a 200 of nothing).
    let mut spoken = false;
    let mut index = 0u32;
    let mut first_sent = false;
    // Word times are from the start of their piece; the piece starts where the audio before it
    // ends (pieces follow each other with no gap: each one's own silence is in its audio). The
    // encoder resamples but keeps the duration, so times in seconds hold at any output rate.
    let (mut piece, mut piece_start) = (usize::MAX, 0.0);
    // Words whose audio is made but not all sent yet (the codec holds back the end of the audio
    // until it has a whole frame), in order.
    let mut words: Vec<WordTiming> = Vec::new();
    let mut written = request.written.map(voice::text::WrittenWords::new);
    let timing = |(word, start, end): (String, f64, f64)| WordTiming { word, start, end };
    loop {
        // Checked before each part is computed, so a departed client costs no more work.
        if tx.is_closed() {
            metrics.cancelled.inc();
            tracing::info!(
                sentence_index = index,
                "client went away; synthesis stopped"
            );
            return;
        }
        let part = match parts.next() {
            None => break,
            Some(Ok(part)) => part,
            Some(Err(error)) => {
                send(Err(status_of(error)));
                return;
            }
        };
        index = u32::try_from(part.piece).unwrap_or(u32::MAX);
        tracing::info!(
            sentence_index = index,
            samples = part.samples.len(),
            last = part.last,
            "audio synthesized"
        );
        spoken |= !part.phonemes.is_empty();
        if part.piece != piece {
            (piece, piece_start) = (part.piece, audio_seconds);
        }
        for w in &part.words {
            let (start, end) = (piece_start + w.start, piece_start + w.end);
            match &mut written {
                Some(written) => {
                    words.extend(written.feed(&w.word, start, end).into_iter().map(timing))
                }
                None => words.push(timing((w.word.clone(), start, end))),
            }
        }
        audio_seconds += part.samples.len() as f64 / f64::from(voice.sample_rate());
        let bytes = match encoder.push(&part.samples) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "encoding failed");
                send(Err(Status::internal("encoding failed; it has been logged")));
                return;
            }
        };
        if bytes.is_empty() {
            // The codec holds these samples until it has a whole frame to write.
            continue;
        }
        if !first_sent {
            first_sent = true;
            metrics
                .first_audio
                .observe(request.received.elapsed().as_secs_f64());
        }
        // The words whose audio has all gone out, with these bytes or before.
        let sent = audio_seconds - encoder.held_back_seconds();
        let complete = words.iter().take_while(|w| w.end <= sent + 1e-9).count();
        let complete: Vec<WordTiming> = words.drain(..complete).collect();
        if !send(Ok(message(bytes, index, None, complete))) {
            metrics.cancelled.inc();
            return;
        }
    }
    if !spoken {
        // Every piece turned out to have nothing espeak-ng would say (symbols it does not read,
        // a word it dies on): no audio is a refusal, never an empty file.
        send(Err(Status::invalid_argument(
            "text: nothing speakable in text",
        )));
        return;
    }
    words.extend(written.as_mut().and_then(|w| w.finish()).map(timing));
    match encoder.finish() {
        Ok(tail) => {
            if !first_sent && !tail.is_empty() {
                // A short text in a codec with a long frame: all of it is in the tail.
                metrics
                    .first_audio
                    .observe(request.received.elapsed().as_secs_f64());
            }
            send(Ok(message(tail, index, Some(audio_seconds), words)));
        }
        Err(error) => {
            tracing::error!(%error, "encoding failed");
            send(Err(Status::internal("encoding failed; it has been logged")));
            return;
        }
    }
    let elapsed = request.received.elapsed().as_secs_f64();
    metrics.generation.observe(elapsed);
    if audio_seconds > 0.0 {
        metrics.real_time_factor.observe(elapsed / audio_seconds);
    }
}

/// The one mapping of a synthesis error to a status: limits and unspeakable text are the
/// client's (`INVALID_ARGUMENT`, naming the limit's setting), the rest is logged and `INTERNAL`.
fn status_of(error: voice::Error) -> Status {
    match error {
        voice::Error::TooManyPhonemes { phonemes, limit } => {
            tracing::info!(phonemes, limit, "refused: too many phonemes in a piece");
            Status::invalid_argument(format!(
                "text: a piece of it has {phonemes} phonemes; the limit is {limit} a piece \
                 (TTS_MAX_PHONEMES_PER_PIECE): add punctuation or spaces to cut it"
            ))
        }
        voice::Error::TooMuchAudio { limit } => {
            tracing::info!(limit, "refused: too much audio");
            Status::invalid_argument(format!(
                "text: makes more than {limit} s of audio, the limit of one request \
                 (TTS_MAX_AUDIO_SECONDS): send it in parts"
            ))
        }
        voice::Error::Text(error) => crate::grpc::text_status(error),
        error => {
            tracing::error!(%error, "synthesis failed");
            Status::internal("synthesis failed; it has been logged")
        }
    }
}
