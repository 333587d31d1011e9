//! The `.onnx.json` file that sits beside every Piper voice.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use crate::Error;

/// A voice's configuration, as Piper's exporter writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct VoiceConfig {
    /// Output sample rate and Piper's quality label.
    pub audio: AudioConfig,
    /// Which espeak-ng voice produces this model's phonemes.
    #[serde(default)]
    pub espeak: EspeakConfig,
    /// The default scales.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// `espeak` for every voice this crate supports (`text` voices map characters directly).
    #[serde(default = "default_phoneme_type")]
    pub phoneme_type: String,
    /// Phoneme (one Unicode scalar, as a string) to one or more ids.
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    /// Size of the phoneme embedding table.
    #[serde(default)]
    pub num_symbols: usize,
    /// 1 for single-speaker voices.
    #[serde(default = "one")]
    pub num_speakers: usize,
    /// Speaker name to speaker id, for multi-speaker voices.
    #[serde(default)]
    pub speaker_id_map: HashMap<String, i64>,
    /// Language tags; absent from old voices.
    #[serde(default)]
    pub language: Option<LanguageConfig>,
    /// The data set the voice was trained on (used as the voice's display name).
    #[serde(default)]
    pub dataset: Option<String>,
}

/// Output audio format.
#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    /// Samples per second of the generated audio (22,050 for `medium` voices).
    pub sample_rate: u32,
    /// `x_low`, `low`, `medium` or `high`.
    #[serde(default)]
    pub quality: Option<String>,
}

/// The espeak-ng voice used for phonemisation.
#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    /// For example `en-us`.
    pub voice: String,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        Self {
            voice: "en-us".into(),
        }
    }
}

/// Default synthesis scales.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct InferenceConfig {
    /// Scale of the noise added to the prior (variation in timbre).
    pub noise_scale: f32,
    /// Above 1 is slower speech.
    pub length_scale: f32,
    /// Scale of the duration predictor's noise (variation in rhythm).
    pub noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        // Piper's defaults.
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

/// Language tags of a voice.
#[derive(Debug, Clone, Deserialize)]
pub struct LanguageConfig {
    /// For example `en_US`.
    pub code: String,
}

fn default_phoneme_type() -> String {
    "espeak".into()
}

fn one() -> usize {
    1
}

impl VoiceConfig {
    /// Reads and checks a voice's `.onnx.json`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and checks a voice configuration.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::Format(format!("voice configuration: {e}")))?;
        for (symbol, ids) in &config.phoneme_id_map {
            if symbol.chars().count() != 1 || ids.is_empty() {
                return Err(Error::Format(format!(
                    "voice configuration: phoneme {symbol:?} must be one character with ids"
                )));
            }
        }
        for required in ["^", "_", "$"] {
            if !config.phoneme_id_map.contains_key(required) {
                return Err(Error::Format(format!(
                    "voice configuration: the phoneme map lacks {required:?}"
                )));
            }
        }
        if config.audio.sample_rate == 0 {
            return Err(Error::Format(
                "voice configuration: sample_rate is zero".into(),
            ));
        }
        Ok(config)
    }

    /// The ids of one phoneme, if the voice knows it.
    pub fn ids_of(&self, phoneme: char) -> Option<&[i64]> {
        let mut buf = [0u8; 4];
        self.phoneme_id_map
            .get(phoneme.encode_utf8(&mut buf) as &str)
            .map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "audio": {"sample_rate": 22050, "quality": "medium"},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_id_map": {"_": [0], "^": [1], "$": [2], "a": [14], "ə": [59]},
        "num_symbols": 256,
        "num_speakers": 1,
        "speaker_id_map": {}
    }"#;

    #[test]
    fn parses_a_piper_config() {
        let c = VoiceConfig::from_json(MINIMAL).unwrap();
        assert_eq!(c.audio.sample_rate, 22050);
        assert_eq!(c.espeak.voice, "en-us");
        assert_eq!(c.inference.length_scale, 1.0);
        assert_eq!(c.ids_of('ə'), Some(&[59][..]));
        assert_eq!(c.ids_of('q'), None);
        assert_eq!(c.num_speakers, 1);
    }

    #[test]
    fn rejects_a_map_without_the_markers() {
        let bad = MINIMAL.replace(r#""$": [2], "#, "");
        assert!(VoiceConfig::from_json(&bad).is_err());
        let bad = MINIMAL.replace(r#""a": [14]"#, r#""ab": [14]"#);
        assert!(VoiceConfig::from_json(&bad).is_err());
    }
}
