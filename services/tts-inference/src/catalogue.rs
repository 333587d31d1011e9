//! The voice catalogue: every Piper voice in the voices directory.
//!
//! A Piper voice is a pair of files, `<id>.onnx` (the weights) and `<id>.onnx.json` (its
//! configuration: sample rate, quality, language, speakers). A voice appears in the catalogue when
//! both files are present and the configuration parses; dropping a new pair into the folder is
//! enough to add one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// What the catalogue knows about one voice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceInfo {
    pub id: String,
    pub name: String,
    pub language: String,
    pub sample_rate: u32,
    pub quality: String,
    /// Speaker id to name, for multi-speaker voices.
    pub speakers: BTreeMap<u32, String>,
    pub weights: PathBuf,
    /// The espeak-ng voice its phonemes come from (`en-us`), the language when none is declared.
    pub espeak_voice: String,
}

/// The part of a Piper `.onnx.json` the catalogue reads.
#[derive(Debug, Deserialize)]
struct PiperConfig {
    audio: PiperAudio,
    #[serde(default)]
    language: Option<PiperLanguage>,
    #[serde(default)]
    dataset: Option<String>,
    #[serde(default)]
    speaker_id_map: BTreeMap<String, u32>,
    #[serde(default)]
    espeak: Option<PiperEspeak>,
}

#[derive(Debug, Deserialize)]
struct PiperEspeak {
    voice: String,
}

#[derive(Debug, Deserialize)]
struct PiperAudio {
    sample_rate: u32,
    #[serde(default)]
    quality: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PiperLanguage {
    code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read the voices directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("voice {id} is not installed (no {file} in the voices directory)")]
    Missing { id: String, file: String },
    #[error("voice {id} has an unreadable configuration: {problem}")]
    BadConfig { id: String, problem: String },
}

/// Reads one voice's configuration, checking that its weights are beside it.
pub fn load_voice(dir: &Path, id: &str) -> Result<VoiceInfo, CatalogueError> {
    let weights = dir.join(format!("{id}.onnx"));
    let config_path = dir.join(format!("{id}.onnx.json"));
    for path in [&config_path, &weights] {
        if !path.is_file() {
            return Err(CatalogueError::Missing {
                id: id.to_owned(),
                file: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            });
        }
    }
    let bad = |problem: String| CatalogueError::BadConfig {
        id: id.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(&config_path).map_err(|e| bad(e.to_string()))?;
    let config: PiperConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if config.audio.sample_rate == 0 {
        return Err(bad("sample_rate is 0".to_owned()));
    }
    Ok(VoiceInfo {
        id: id.to_owned(),
        name: config.dataset.unwrap_or_else(|| id.to_owned()),
        language: config.language.map(|l| l.code).unwrap_or_default(),
        sample_rate: config.audio.sample_rate,
        quality: config.audio.quality.unwrap_or_default(),
        speakers: config
            .speaker_id_map
            .into_iter()
            .map(|(name, id)| (id, name))
            .collect(),
        weights,
        espeak_voice: config.espeak.map(|e| e.voice).unwrap_or_default(),
    })
}

/// Every usable voice in `dir`, sorted by id. Voices whose configuration cannot be read are
/// skipped with a warning rather than hiding the others.
pub fn scan(dir: &Path) -> Result<Vec<VoiceInfo>, CatalogueError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CatalogueError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    let mut voices = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".onnx.json")) else {
            continue;
        };
        match load_voice(dir, id) {
            Ok(voice) => voices.push(voice),
            Err(error) => tracing::warn!(%error, "skipping voice"),
        }
    }
    voices.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(voices)
}
