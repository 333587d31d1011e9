//! Predictions as the simulator keeps them: typed ids, statuses and requests, parsed once from
//! the request body, and the JSON object Replicate returns for them.

use std::fmt;

use audio_codec::AudioFormat;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest audio the simulator makes, in seconds. Real models stop far earlier (stable-audio-open
/// at 47 s, MusicGen at 30 s per call); the bound keeps one request's memory small.
pub const MAX_SECONDS: f64 = 300.0;

/// Length when the input names none: the default of both MusicGen and stable-audio-open.
const DEFAULT_SECONDS: f64 = 8.0;

/// A prediction id in Replicate's shape: 26 characters of lowercase base32.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PredictionId(String);

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl PredictionId {
    pub fn generate() -> Self {
        let mut bits = uuid::Uuid::new_v4().as_u128();
        let id = (0..26)
            .map(|_| {
                let c = BASE32[(bits & 31) as usize];
                bits >>= 5;
                char::from(c)
            })
            .collect();
        Self(id)
    }

    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 26 && raw.bytes().all(|b| BASE32.contains(&b))).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PredictionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Replicate's prediction statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    /// Its `Cancel-After` deadline passed before it started.
    Aborted,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Starting | Self::Processing)
    }

    /// The status as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
        }
    }
}

/// What the simulator synthesises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shaped noise.
    SoundEffect,
    /// A chord progression.
    Music,
}

/// The model a prediction runs: its `owner/name` and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub model: String,
    /// 64 hexadecimal digits, or `hidden` for an official model run without a version.
    pub version: String,
    pub kind: Kind,
}

/// The audio models Sonora's notes name, so that a bare version id finds its model.
const KNOWN_MODELS: &[(&str, &str, Kind)] = &[
    (
        "ardianfe/music-gen-fn-200e",
        "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85",
        Kind::Music,
    ),
    (
        "meta/musicgen",
        "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb",
        Kind::Music,
    ),
    (
        "stackadoc/stable-audio-open-1.0",
        "2cd7d762d12df80757b18439c8fcd0ac3311251eb94ac6bdc026bb4ce4540868",
        Kind::SoundEffect,
    ),
    (
        "stackadoc/stable-audio-open-1.0",
        "9aff84a639f96d0f7e6081cdea002d15133d0043727f849c40abdd166b7c75a8",
        Kind::SoundEffect,
    ),
    (
        "sepal/audiogen",
        "154b3e5141493cb1b8cec976d9aa90f2b691137e39ad906d2421b74c2a8c52b8",
        Kind::SoundEffect,
    ),
];

/// A request the caller got wrong; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InputError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InputError {
    InputError {
        field,
        problem: problem.into(),
    }
}

fn is_version_id(raw: &str) -> bool {
    raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_model_name(raw: &str) -> bool {
    let mut parts = raw.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Models are music when the notes say so or their name says `music`; everything else makes
/// sound effects.
fn kind_of(model: &str) -> Kind {
    KNOWN_MODELS
        .iter()
        .find(|(name, _, _)| *name == model)
        .map(|(_, _, kind)| *kind)
        .unwrap_or(if model.contains("music") {
            Kind::Music
        } else {
            Kind::SoundEffect
        })
}

impl ModelRef {
    /// Parses `version` as `POST /v1/predictions` takes it: `{owner}/{name}:{64 hex}`,
    /// `{owner}/{name}` (an official model), or a bare 64-hex version id. A bare id the
    /// simulator does not know is accepted as a sound-effect model, so that operators can point
    /// Sonora at any version without teaching the simulator about it first.
    pub fn from_version(raw: &str) -> Result<Self, InputError> {
        const SHAPE: &str =
            "must be {owner}/{name}:{64 hex digits}, {owner}/{name} or a version id";
        if let Some((model, version)) = raw.split_once(':') {
            if !is_model_name(model) || !is_version_id(version) {
                return Err(invalid("version", SHAPE));
            }
            return Ok(Self {
                model: model.to_owned(),
                version: version.to_owned(),
                kind: kind_of(model),
            });
        }
        if is_version_id(raw) {
            return Ok(KNOWN_MODELS
                .iter()
                .find(|(_, version, _)| *version == raw)
                .map_or_else(
                    || Self {
                        model: "simulator/unknown-model".to_owned(),
                        version: raw.to_owned(),
                        kind: Kind::SoundEffect,
                    },
                    |(model, version, kind)| Self {
                        model: (*model).to_owned(),
                        version: (*version).to_owned(),
                        kind: *kind,
                    },
                ));
        }
        if is_model_name(raw) {
            return Ok(Self::official(raw));
        }
        Err(invalid("version", SHAPE))
    }

    /// An official model run by name (`POST /v1/models/{owner}/{name}/predictions`); Replicate
    /// hides the version it used.
    pub fn from_path(owner: &str, name: &str) -> Result<Self, InputError> {
        let model = format!("{owner}/{name}");
        if !is_model_name(&model) {
            return Err(invalid("model", "must be {owner}/{name}"));
        }
        Ok(Self::official(&model))
    }

    fn official(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            version: "hidden".to_owned(),
            kind: kind_of(model),
        }
    }
}

/// The audio a prediction makes, read from its `input`.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioRequest {
    pub kind: Kind,
    pub seconds: f64,
    pub format: AudioFormat,
    pub seed: Option<u64>,
}

impl AudioRequest {
    /// Reads the length (`seconds_total` or `duration` for sound effects, `duration` for music),
    /// `output_format` (`wav` or `mp3`) and `seed` (-1 or absent: random) from `input`.
    pub fn from_input(kind: Kind, input: &Map<String, Value>) -> Result<Self, InputError> {
        let length_field = match kind {
            Kind::SoundEffect if input.contains_key("seconds_total") => "seconds_total",
            _ => "duration",
        };
        let seconds = match input.get(length_field) {
            None | Some(Value::Null) => DEFAULT_SECONDS,
            Some(value) => value
                .as_f64()
                .filter(|s| *s > 0.0 && *s <= MAX_SECONDS)
                .ok_or_else(|| {
                    invalid(
                        if length_field == "duration" {
                            "input.duration"
                        } else {
                            "input.seconds_total"
                        },
                        format!("must be a number of seconds above 0 and at most {MAX_SECONDS}"),
                    )
                })?,
        };
        let format = match input.get("output_format") {
            None | Some(Value::Null) => AudioFormat::Wav,
            Some(Value::String(name)) if name == "wav" => AudioFormat::Wav,
            Some(Value::String(name)) if name == "mp3" => AudioFormat::Mp3,
            Some(_) => return Err(invalid("input.output_format", "must be wav or mp3")),
        };
        let seed = match input.get("seed") {
            None | Some(Value::Null) => None,
            Some(value) if value.as_i64() == Some(-1) => None,
            Some(value) => Some(value.as_u64().ok_or_else(|| {
                invalid("input.seed", "must be a non-negative whole number or -1")
            })?),
        };
        if let Some(prompt) = input.get("prompt")
            && !prompt.is_string()
        {
            return Err(invalid("input.prompt", "must be a string"));
        }
        Ok(Self {
            kind,
            seconds,
            format,
            seed,
        })
    }
}

/// Reads a `Cancel-After` header: `30s`, `5m`, `1h30m45s`, or a bare number of seconds; at
/// least 5 seconds, as Replicate requires.
pub fn parse_cancel_after(raw: &str) -> Result<std::time::Duration, InputError> {
    const PROBLEM: &str = "must be a duration such as 30s, 5m or 1h30m45s, of at least 5 seconds";
    let bad = || invalid("Cancel-After", PROBLEM);
    let raw = raw.trim();
    let seconds = if let Ok(bare) = raw.parse::<u64>() {
        bare
    } else {
        let mut total = 0u64;
        let mut number = String::new();
        let mut seen_unit = false;
        for c in raw.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let scale = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            let value: u64 = number.parse().map_err(|_| bad())?;
            total = value
                .checked_mul(scale)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            number.clear();
            seen_unit = true;
        }
        if !number.is_empty() || !seen_unit {
            return Err(bad());
        }
        total
    };
    if seconds < 5 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(seconds))
}

/// Which webhooks a prediction wants (`webhook_events_filter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// As the client sent it, echoed in the prediction object.
    pub given: Option<Vec<String>>,
    pub start: bool,
    pub completed: bool,
}

impl EventFilter {
    /// Without a filter Replicate sends new outputs and the end; this simulator's only output
    /// arrives at the end, so that is one `completed` webhook.
    /// The end only, as the legacy `webhook_completed` field asks.
    pub fn completed_only() -> Self {
        Self {
            given: None,
            start: false,
            completed: true,
        }
    }

    pub fn parse(value: Option<&Value>) -> Result<Self, InputError> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(Self::completed_only());
        };
        const PROBLEM: &str = "must be a list of start, output, logs and completed";
        let events = value
            .as_array()
            .ok_or_else(|| invalid("webhook_events_filter", PROBLEM))?
            .iter()
            .map(|event| match event.as_str() {
                Some(e @ ("start" | "output" | "logs" | "completed")) => Ok(e.to_owned()),
                _ => Err(invalid("webhook_events_filter", PROBLEM)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let has = |name: &str| events.iter().any(|e| e == name);
        Ok(Self {
            start: has("start"),
            // The output is only known at the end, so `output` asks for the same webhook.
            completed: has("completed") || has("output"),
            given: Some(events),
        })
    }
}

/// One prediction and everything that happened to it.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub id: PredictionId,
    /// Creation order, for listing and cursors.
    pub seq: u64,
    pub model: ModelRef,
    pub input: Value,
    pub audio: AudioRequest,
    pub webhook: Option<url::Url>,
    pub events: EventFilter,
    pub status: Status,
    pub logs: String,
    /// The output file's URL once it exists.
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub predict_time: Option<f64>,
    pub data_removed: bool,
}

/// The time now, to the microsecond: what the API shows is what the listing's filters compare,
/// so a client passing back a `created_at` it was shown gets exact comparisons.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound as _;
    Utc::now().trunc_subsecs(6)
}

/// Replicate's timestamps: microseconds and `Z`.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Serialize)]
struct Urls {
    get: String,
    cancel: String,
    web: String,
}

#[derive(Serialize)]
struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    predict_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_time: Option<f64>,
}

/// The prediction object on the wire.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    model: &'a str,
    version: &'a str,
    input: &'a Value,
    logs: &'a str,
    output: Option<&'a str>,
    error: Option<&'a str>,
    status: Status,
    source: &'static str,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    data_removed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_events_filter: Option<&'a [String]>,
    metrics: Metrics,
    urls: Urls,
}

impl Prediction {
    /// The object Replicate returns, with URLs under `base` (no trailing slash).
    pub fn to_json(&self, base: &str) -> Value {
        let get = format!("{base}/v1/predictions/{}", self.id);
        let total_time = self
            .completed_at
            .map(|end| (end - self.created_at).as_seconds_f64());
        let body = Body {
            id: self.id.as_str(),
            model: &self.model.model,
            version: &self.model.version,
            input: &self.input,
            logs: &self.logs,
            output: self.output.as_deref(),
            error: self.error.as_deref(),
            status: self.status,
            source: "api",
            created_at: timestamp(self.created_at),
            started_at: self.started_at.map(timestamp),
            completed_at: self.completed_at.map(timestamp),
            data_removed: self.data_removed,
            webhook: self.webhook.as_ref().map(url::Url::as_str),
            webhook_events_filter: self.events.given.as_deref(),
            metrics: Metrics {
                predict_time: self.predict_time,
                total_time,
            },
            urls: Urls {
                cancel: format!("{get}/cancel"),
                web: format!("{base}/p/{}", self.id),
                get,
            },
        };
        serde_json::to_value(body).expect("the prediction object serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_replicates_shape() {
        let id = PredictionId::generate();
        assert_eq!(id.as_str().len(), 26);
        assert_eq!(PredictionId::parse(id.as_str()), Some(id));
        assert_eq!(PredictionId::parse("not-an-id"), None);
    }

    #[test]
    fn versions_resolve_to_models() {
        let music = ModelRef::from_version(
            "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85",
        )
        .unwrap();
        assert_eq!(music.model, "ardianfe/music-gen-fn-200e");
        assert_eq!(music.kind, Kind::Music);
        let named = ModelRef::from_version(&format!(
            "stackadoc/stable-audio-open-1.0:{}",
            "a".repeat(64)
        ))
        .unwrap();
        assert_eq!(named.kind, Kind::SoundEffect);
        assert_eq!(
            ModelRef::from_version("meta/musicgen").unwrap().version,
            "hidden"
        );
        assert_eq!(
            ModelRef::from_version("nonsense").unwrap_err().field,
            "version"
        );
        assert_eq!(
            ModelRef::from_version("a/b:123").unwrap_err().field,
            "version"
        );
    }

    #[test]
    fn cancel_after_takes_replicates_forms() {
        let secs = |raw| parse_cancel_after(raw).map(|d| d.as_secs());
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("1h30m45s"), Ok(5445));
        assert_eq!(secs("12"), Ok(12));
        for bad in ["4s", "3", "", "5x", "m", "10s5"] {
            assert!(parse_cancel_after(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inputs_name_the_bad_field() {
        let input = |v: Value| v.as_object().unwrap().clone();
        let effect = AudioRequest::from_input(
            Kind::SoundEffect,
            &input(serde_json::json!({"seconds_total": 2.5, "output_format": "mp3"})),
        )
        .unwrap();
        assert_eq!((effect.seconds, effect.format), (2.5, AudioFormat::Mp3));
        let error =
            AudioRequest::from_input(Kind::Music, &input(serde_json::json!({"duration": -1})))
                .unwrap_err();
        assert_eq!(error.field, "input.duration");
        let error = AudioRequest::from_input(
            Kind::Music,
            &input(serde_json::json!({"output_format": "ogg"})),
        )
        .unwrap_err();
        assert_eq!(error.field, "input.output_format");
    }
}
