//! Which Replicate model makes each content type, and how a job becomes its input: settings, so
//! that operators switch models without a release.
//!
//! A model is a version (`<64 hex>`, or `owner/name:<64 hex>`) and an input template: a JSON
//! object whose string values `"{prompt}"`, `"{duration}"` and `"{seed}"` are replaced by the
//! job's prompt, its duration in whole seconds (rounded up: audio models take integers, and
//! effects are trimmed afterwards) and its seed (the field is left out when the job has none);
//! every other field is sent as it is.

use serde_json::{Map, Value};
use settings::{SettingError, Sources};

use crate::jobs::JobType;

/// The model and input template for one content type.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub version: String,
    template: Map<String, Value>,
}

/// Sound effects: Stable Audio Open 1.0 (the notes' schema: `prompt`, `seconds_total` ≤ 47).
const SOUND_EFFECT_VERSION: &str =
    "2cd7d762d12df80757b18439c8fcd0ac3311251eb94ac6bdc026bb4ce4540868";
const SOUND_EFFECT_INPUT: &str = r#"{"prompt": "{prompt}", "seconds_total": "{duration}", "seed": "{seed}", "cfg_scale": 6, "steps": 100}"#;
/// Background music: the MusicGen fine-tune the old app used, asked for MP3 as it did.
const MUSIC_VERSION: &str = "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85";
const MUSIC_INPUT: &str =
    r#"{"prompt": "{prompt}", "duration": "{duration}", "seed": "{seed}", "output_format": "mp3"}"#;

/// The models of both content types.
#[derive(Debug, Clone, PartialEq)]
pub struct Models {
    pub sound_effect: Model,
    pub background_music: Model,
}

impl Models {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        Ok(Self {
            sound_effect: Model::load(
                src,
                "SOUND_EFFECT",
                SOUND_EFFECT_VERSION,
                SOUND_EFFECT_INPUT,
            )?,
            background_music: Model::load(src, "BACKGROUND_MUSIC", MUSIC_VERSION, MUSIC_INPUT)?,
        })
    }

    pub fn for_type(&self, job_type: JobType) -> &Model {
        match job_type {
            JobType::SoundEffect => &self.sound_effect,
            JobType::BackgroundMusic => &self.background_music,
        }
    }
}

impl Model {
    fn load(
        src: &Sources,
        prefix: &str,
        default_version: &str,
        default_input: &str,
    ) -> Result<Self, SettingError> {
        let version_name = format!("{prefix}_MODEL_VERSION");
        let input_name = format!("{prefix}_MODEL_INPUT");
        let version: String = src.or(&version_name, default_version.to_owned())?;
        if !is_version(&version) {
            return Err(SettingError::new(
                version_name,
                "must be a Replicate version: 64 hexadecimal digits, or owner/name:<64 hex>",
            ));
        }
        let input: String = src.or(&input_name, default_input.to_owned())?;
        let template =
            parse_template(&input).map_err(|problem| SettingError::new(input_name, problem))?;
        Ok(Self { version, template })
    }

    /// The input for a job.
    pub fn input(&self, prompt: &str, duration_seconds: f64, seed: Option<i64>) -> Value {
        let duration = duration_seconds.ceil().max(1.0) as i64;
        let mut input = Map::new();
        for (field, value) in &self.template {
            let value = match value.as_str() {
                Some("{prompt}") => Value::from(prompt),
                Some("{duration}") => Value::from(duration),
                Some("{seed}") => match seed {
                    Some(seed) => Value::from(seed),
                    None => continue,
                },
                _ => value.clone(),
            };
            input.insert(field.clone(), value);
        }
        Value::Object(input)
    }
}

fn is_version(text: &str) -> bool {
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match text.split_once(':') {
        None => hex(text),
        Some((model, version)) => {
            hex(version)
                && model.split('/').count() == 2
                && model.split('/').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                })
        }
    }
}

fn parse_template(text: &str) -> Result<Map<String, Value>, String> {
    let Ok(Value::Object(template)) = serde_json::from_str::<Value>(text) else {
        return Err("must be a JSON object, such as {\"prompt\": \"{prompt}\", \"duration\": \"{duration}\"}".to_owned());
    };
    for placeholder in ["{prompt}", "{duration}"] {
        if !template.values().any(|v| v.as_str() == Some(placeholder)) {
            return Err(format!(
                "must have a field whose value is \"{placeholder}\""
            ));
        }
    }
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Models, SettingError> {
        Models::load(&Sources::from_pairs(pairs.iter().copied()).unwrap())
    }

    #[test]
    fn the_defaults_are_the_old_apps_models() {
        let models = load(&[]).unwrap();
        assert_eq!(
            models.background_music.input("calm piano", 12.2, None),
            serde_json::json!({"prompt": "calm piano", "duration": 13, "output_format": "mp3"})
        );
        assert_eq!(
            models.sound_effect.input("rain", 2.5, Some(7)),
            serde_json::json!({"prompt": "rain", "seconds_total": 3, "seed": 7, "cfg_scale": 6, "steps": 100})
        );
    }

    #[test]
    fn operators_switch_models_by_settings() {
        let models = load(&[
            (
                "SOUND_EFFECT_MODEL_VERSION",
                "sepal/audiogen:154b3e5141493cb1b8cec976d9aa90f2b691137e39ad906d2421b74c2a8c52b8",
            ),
            (
                "SOUND_EFFECT_MODEL_INPUT",
                r#"{"prompt": "{prompt}", "duration": "{duration}", "output_format": "wav"}"#,
            ),
        ])
        .unwrap();
        assert_eq!(
            models.sound_effect.input("door", 1.0, Some(3)),
            serde_json::json!({"prompt": "door", "duration": 1, "output_format": "wav"})
        );
    }

    #[test]
    fn bad_models_are_refused_by_name() {
        let e = load(&[("SOUND_EFFECT_MODEL_VERSION", "latest")]).unwrap_err();
        assert_eq!(e.name, "SOUND_EFFECT_MODEL_VERSION");
        let e = load(&[("BACKGROUND_MUSIC_MODEL_INPUT", r#"{"prompt": "{prompt}"}"#)]).unwrap_err();
        assert_eq!(e.name, "BACKGROUND_MUSIC_MODEL_INPUT");
        assert!(e.problem.contains("{duration}"), "{}", e.problem);
        assert!(load(&[("BACKGROUND_MUSIC_MODEL_INPUT", "[]")]).is_err());
    }
}
