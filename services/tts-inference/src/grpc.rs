//! The `sonora.tts.v1.TtsInference` gRPC service.

use std::{path::PathBuf, pin::Pin, sync::Arc, time::Instant};

use audio_codec::AudioFormat;
use sonora_proto::tts::v1::{
    self as pb, ListVoicesRequest, ListVoicesResponse, REFUSAL_METADATA,
    REFUSAL_UNSUPPORTED_SCRIPT, SKIPPED_METADATA, Speaker, SynthesizeRequest, SynthesizeResponse,
    Voice, tts_inference_server::TtsInference,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use voice::{Step, text::TextError};

use crate::{
    catalogue::{self, CatalogueError, VoiceInfo},
    synthesis::{self, InferencePool, MAX_TEXT_CHARS, SynthesisMetrics, Voices},
};

pub struct TtsService {
    pub voices_dir: Arc<PathBuf>,
    pub default_voice: Arc<str>,
    pub voices: Arc<Voices>,
    pub pool: Arc<InferencePool>,
    pub metrics: SynthesisMetrics,
    pub limits: voice::Limits,
}

fn format(value: i32) -> Result<AudioFormat, Status> {
    Ok(
        match pb::AudioFormat::try_from(value)
            .map_err(|_| Status::invalid_argument("format: unknown"))?
        {
            pb::AudioFormat::Unspecified | pb::AudioFormat::Wav => AudioFormat::Wav,
            pb::AudioFormat::Pcm16 => AudioFormat::Pcm16,
            pb::AudioFormat::Mp3 => AudioFormat::Mp3,
            pb::AudioFormat::Opus => AudioFormat::Opus,
            pb::AudioFormat::Flac => AudioFormat::Flac,
            pb::AudioFormat::Mulaw => AudioFormat::Mulaw,
            pb::AudioFormat::Aac => AudioFormat::Aac,
        },
    )
}

fn noise(field: &str, value: Option<f32>) -> Result<Option<f32>, Status> {
    match value {
        Some(v) if !(0.0..=2.0).contains(&v) || v.is_nan() => Err(Status::invalid_argument(
            format!("{field}: must be between 0 and 2"),
        )),
        other => Ok(other),
    }
}

impl TtsService {
    /// Checks a request at the edge; nothing is queued for a bad one.
    fn validate(
        &self,
        r: SynthesizeRequest,
        received: Instant,
    ) -> Result<synthesis::Request, Status> {
        let chars = r.text.chars().count();
        if r.text.trim().is_empty() {
            return Err(Status::invalid_argument("text: is empty"));
        }
        if chars > MAX_TEXT_CHARS {
            return Err(Status::invalid_argument(format!(
                "text: {chars} characters; the limit is {MAX_TEXT_CHARS}"
            )));
        }
        let speed = if r.speed == 0.0 { 1.0 } else { r.speed };
        if !(0.25..=4.0).contains(&speed) || speed.is_nan() {
            return Err(Status::invalid_argument(
                "speed: must be between 0.25 and 4.0",
            ));
        }
        let voice = if r.voice.is_empty() {
            self.default_voice.to_string()
        } else {
            r.voice
        };
        if voice.contains(['/', '\\']) || voice.starts_with('.') {
            return Err(Status::invalid_argument("voice: not a voice id"));
        }
        let info = catalogue::load_voice(&self.voices_dir, &voice)?;
        // The whole text front end runs here, on the executor: it is linear in the text (at most
        // 4,096 characters) and lets a text with nothing to speak be refused before it queues.
        let language = if info.language.is_empty() {
            info.espeak_voice.as_str()
        } else {
            info.language.as_str()
        };
        let ssml = match pb::TextType::try_from(r.text_type)
            .map_err(|_| Status::invalid_argument("text_type: unknown"))?
        {
            pb::TextType::Unspecified => voice::ssml::looks_like_ssml(&r.text),
            pb::TextType::Plain => false,
            pb::TextType::Ssml => true,
        };
        let (steps, skipped) = if ssml {
            let script = voice::ssml::parse(&r.text)
                .map_err(|e| Status::invalid_argument(format!("text: {e}")))?;
            steps_of(script, language, self.limits)?
        } else {
            let prepared = voice::text::prepare(&r.text, language).map_err(text_status)?;
            let steps = vec![Step::Text {
                pieces: prepared.pieces,
                rate: 1.0,
            }];
            (steps, prepared.skipped)
        };
        let format = format(r.format)?;
        let sample_rate = (r.sample_rate != 0).then_some(r.sample_rate);
        if let Some(rate) = sample_rate
            && !format.supports_rate(rate)
        {
            return Err(Status::invalid_argument(format!(
                "sample_rate: {} cannot carry {rate} Hz",
                format.name()
            )));
        }
        Ok(synthesis::Request {
            steps,
            skipped,
            limits: self.limits,
            voice,
            speaker: r.speaker,
            length_scale: 1.0 / speed,
            noise_scale: noise("noise_scale", r.noise_scale)?,
            noise_w: noise("noise_w", r.noise_w)?,
            format,
            sample_rate,
            written: (r.timestamps && !ssml).then(|| voice::text::written_words(&r.text)),
            timestamps: r.timestamps,
            received,
        })
    }
}

/// The steps of an SSML script: each text run through the front end (a run with nothing to
/// speak is dropped), phonemes and breaks as they are. Refused when nothing is left to speak, or
/// when the breaks alone make more audio than a request may.
fn steps_of(
    script: voice::ssml::Script,
    language: &str,
    limits: voice::Limits,
) -> Result<(Vec<Step>, usize), Status> {
    use voice::ssml::Segment;
    let (mut steps, mut skipped, mut speech, mut silence) = (Vec::new(), 0, false, 0.0);
    for segment in script.segments {
        match segment {
            Segment::Text { text, rate } => match voice::text::prepare(&text, language) {
                Ok(prepared) => {
                    skipped += prepared.skipped;
                    speech = true;
                    steps.push(Step::Text {
                        pieces: prepared.pieces,
                        rate,
                    });
                }
                Err(TextError::NothingToSpeak) => {}
                Err(error) => return Err(text_status(error)),
            },
            Segment::Phonemes { ipa, word, rate } => {
                speech = true;
                steps.push(Step::Phonemes { ipa, word, rate });
            }
            Segment::Break { seconds } => {
                silence += seconds;
                steps.push(Step::Silence { seconds });
            }
        }
    }
    if !speech {
        return Err(text_status(TextError::NothingToSpeak));
    }
    if silence > limits.max_audio_seconds {
        return Err(Status::invalid_argument(format!(
            "text: its breaks make more than {} s of audio, the limit of one request \
             (TTS_MAX_AUDIO_SECONDS)",
            limits.max_audio_seconds
        )));
    }
    Ok((steps, skipped))
}

/// A text the voice cannot speak: `INVALID_ARGUMENT`; one mostly in another script also carries
/// [`REFUSAL_METADATA`] = [`REFUSAL_UNSUPPORTED_SCRIPT`], for the gateway's 422.
pub(crate) fn text_status(error: TextError) -> Status {
    let mut status = Status::invalid_argument(format!("text: {error}"));
    if matches!(error, TextError::UnsupportedScript { .. }) {
        status.metadata_mut().insert(
            REFUSAL_METADATA,
            MetadataValue::from_static(REFUSAL_UNSUPPORTED_SCRIPT),
        );
    }
    status
}

impl From<CatalogueError> for Status {
    fn from(error: CatalogueError) -> Self {
        tracing::error!(%error, "voice catalogue");
        match error {
            CatalogueError::Missing { .. } => Status::not_found(error.to_string()),
            CatalogueError::Directory { .. } | CatalogueError::BadConfig { .. } => {
                Status::internal("the voice catalogue cannot be read")
            }
        }
    }
}

fn to_proto(voice: VoiceInfo, default_voice: &str) -> Voice {
    Voice {
        is_default: voice.id == default_voice,
        id: voice.id,
        name: voice.name,
        language: voice.language,
        sample_rate: voice.sample_rate,
        quality: voice.quality,
        speakers: voice
            .speakers
            .into_iter()
            .map(|(id, name)| Speaker { id, name })
            .collect(),
    }
}

#[tonic::async_trait]
impl TtsInference for TtsService {
    type SynthesizeStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<SynthesizeResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(voice, chars))]
    async fn synthesize(
        &self,
        request: Request<SynthesizeRequest>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let received = Instant::now();
        let chars = request.get_ref().text.chars().count();
        tracing::Span::current().record("chars", chars);
        let request = self.validate(request.into_inner(), received)?;
        tracing::Span::current().record("voice", request.voice.as_str());
        if request.skipped > 0 {
            tracing::info!(
                skipped = request.skipped,
                "characters in scripts the voice does not read are skipped"
            );
        }
        let skipped = request.skipped;
        // One message in flight: synthesis stays at most a sentence ahead of the client.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (voices, metrics) = (Arc::clone(&self.voices), self.metrics.clone());
        let span = tracing::Span::current();
        self.pool.try_submit(Box::new(move || {
            let _entered = span.enter();
            synthesis::run(&voices, &metrics, request, &tx);
        }))?;
        let mut response =
            Response::new(Box::pin(ReceiverStream::new(rx)) as Self::SynthesizeStream);
        response
            .metadata_mut()
            .insert(SKIPPED_METADATA, MetadataValue::from(skipped as u64));
        Ok(response)
    }

    #[tracing::instrument(skip_all)]
    async fn list_voices(
        &self,
        _request: Request<ListVoicesRequest>,
    ) -> Result<Response<ListVoicesResponse>, Status> {
        let dir = Arc::clone(&self.voices_dir);
        let voices = tokio::task::spawn_blocking(move || catalogue::scan(&dir))
            .await
            .map_err(|_| Status::internal("the voice catalogue scan failed"))??;
        Ok(Response::new(ListVoicesResponse {
            voices: voices
                .into_iter()
                .map(|v| to_proto(v, &self.default_voice))
                .collect(),
        }))
    }
}
