//! Text in, audio out, one sentence at a time.

use std::{path::Path, sync::Arc};

use candle_core::Device;

use crate::{Error, Phonemizer, Scales, Vits, VoiceConfig, Weights, phoneme_ids, text};

/// A loaded voice: its configuration, its model and its phonemizer.
#[derive(Debug, Clone)]
pub struct Voice {
    config: VoiceConfig,
    model: Vits,
    phonemizer: Phonemizer,
}

/// The audio of one sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The sentence, after normalisation.
    pub sentence: String,
    /// Its phonemes, as given to the model.
    pub phonemes: String,
    /// Mono samples in `[-1, 1]` at the voice's sample rate.
    pub samples: Vec<f32>,
}

impl Voice {
    /// Loads `NAME.onnx` and the `NAME.onnx.json` beside it.
    pub fn load(onnx: &Path) -> Result<Self, Error> {
        let mut json = onnx.as_os_str().to_owned();
        json.push(".json");
        let config = VoiceConfig::from_file(Path::new(&json))?;
        let weights = Weights::from_onnx_file(onnx, &Device::Cpu)?;
        Self::from_parts(config, &weights)
    }

    /// Builds a voice from an already parsed configuration and weights.
    pub fn from_parts(config: VoiceConfig, weights: &Weights) -> Result<Self, Error> {
        if config.phoneme_type != "espeak" {
            return Err(Error::Format(format!(
                "phoneme type {:?} is not supported (only espeak)",
                config.phoneme_type
            )));
        }
        let model = Vits::load(weights, &Device::Cpu)?;
        let phonemizer = Phonemizer::new(&config.espeak.voice)?;
        Ok(Self {
            config,
            model,
            phonemizer,
        })
    }

    /// The voice's configuration.
    pub fn config(&self) -> &VoiceConfig {
        &self.config
    }

    /// The voice's default scales.
    pub fn default_scales(&self) -> Scales {
        self.config.inference.into()
    }

    /// Samples per second of the audio this voice makes.
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Synthesises `text` sentence by sentence. Phonemes for every sentence are made first, by one
    /// espeak-ng process; each sentence's audio is computed when the iterator reaches it, so the
    /// first chunk is ready after one sentence's inference. This blocks: run it off any async
    /// executor.
    pub fn synthesize<'a>(
        &'a self,
        text: &str,
        speaker: Option<u32>,
        scales: Scales,
    ) -> Result<impl Iterator<Item = Result<Chunk, Error>> + 'a, Error> {
        if let Some(id) = speaker
            && id as usize >= self.config.num_speakers.max(self.model.num_speakers())
        {
            return Err(Error::Format(format!("the voice has no speaker {id}")));
        }
        let sentences = text::split_sentences(&text::normalize(text));
        let phonemes = self.phonemizer.phonemize_all(&sentences)?;
        Ok(sentences
            .into_iter()
            .zip(phonemes)
            .filter(|(_, p)| !p.trim().is_empty())
            .map(move |(sentence, phonemes)| {
                let ids = phoneme_ids(&self.config, &phonemes);
                let samples = self.model.synthesize(&ids, speaker, scales)?;
                Ok(Chunk {
                    sentence,
                    phonemes,
                    samples,
                })
            }))
    }

    /// Synthesises `text` on a blocking thread of the current tokio runtime and hands each
    /// sentence's audio over as soon as it is made. The channel holds one chunk: inference stays
    /// at most one sentence ahead of the consumer, and dropping the receiver stops the work after
    /// the sentence in progress.
    ///
    /// Errors (bad speaker, espeak-ng failure, inference failure) arrive as the last item.
    pub fn stream(
        self: Arc<Self>,
        text: String,
        speaker: Option<u32>,
        scales: Scales,
    ) -> tokio::sync::mpsc::Receiver<Result<Chunk, Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::task::spawn_blocking(move || {
            let chunks = match self.synthesize(&text, speaker, scales) {
                Ok(chunks) => chunks,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            for chunk in chunks {
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    // The receiver is gone (client left) or the stream ended in an error.
                    return;
                }
            }
        });
        rx
    }
}
