//! Text in, audio out, one sentence at a time.

use std::{collections::VecDeque, path::Path, sync::Arc, time::Instant};

use candle_core::Device;

use crate::{
    Error, Phonemized, Phonemizer, Scales, Vits, VoiceConfig, Weights,
    model::{self, Latent},
    phoneme_id_starts, phoneme_ids, text,
};

/// Characters of text phonemised per espeak-ng batch after the first piece (espeak-ng takes
/// about 0.1 ms a character here, so a batch costs tens of milliseconds, well under the audio
/// of the piece before it).
pub const PHONEME_BATCH_CHARS: usize = 600;

/// Bounds on the work one text may cause, checked before the work they bound: a piece's
/// phonemes as soon as espeak-ng has given them (the text encoder's memory grows with the
/// square of their number), and a piece's seconds of audio from the duration predictor, before
/// the flows and the decoder run on them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Phonemes one piece may have.
    pub max_phonemes_per_piece: usize,
    /// Seconds of audio one text may make, all its pieces together.
    pub max_audio_seconds: f64,
}

impl Limits {
    /// 1,000 phonemes a piece: a 400-character piece of ordinary text has about 400, and one of
    /// spelled-out letters about 1,000. 600 s of audio a text: 4,096 characters of ordinary
    /// text make about 280 s at normal speed.
    pub const DEFAULT: Self = Self {
        max_phonemes_per_piece: 1000,
        max_audio_seconds: 600.0,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The pieces of one request: those still to phonemise and those phonemised but not spoken.
struct Pieces {
    waiting: VecDeque<String>,
    ready: VecDeque<(String, Phonemized)>,
    first: bool,
    /// Whether the words of each piece are wanted ([`Phonemizer::phonemize_with_words`]).
    words: bool,
}

impl Pieces {
    /// Phonemises the next batch: the first piece alone, then up to [`PHONEME_BATCH_CHARS`].
    /// Pieces without phonemes (nothing speakable) are dropped.
    fn phonemize_next(&mut self, phonemizer: &Phonemizer) -> Result<(), Error> {
        let mut batch = Vec::new();
        let mut chars = 0;
        while let Some(piece) = self.waiting.front() {
            let n = piece.chars().count();
            if !batch.is_empty() && (self.first || chars + n > PHONEME_BATCH_CHARS) {
                break;
            }
            chars += n;
            batch.extend(self.waiting.pop_front());
        }
        self.first = false;
        if batch.is_empty() {
            return Ok(());
        }
        let phonemes = phonemizer.phonemize_sentences(&batch, self.words)?;
        self.ready.extend(
            batch
                .into_iter()
                .zip(phonemes)
                .filter(|(_, p)| !p.phonemes.trim().is_empty()),
        );
        Ok(())
    }

    /// The next piece and its phonemes, phonemising another batch when none is ready.
    fn next(&mut self, phonemizer: &Phonemizer) -> Option<Result<(String, Phonemized), Error>> {
        while self.ready.is_empty() && !self.waiting.is_empty() {
            if let Err(e) = self.phonemize_next(phonemizer) {
                self.waiting.clear();
                return Some(Err(e));
            }
        }
        self.ready.pop_front().map(Ok)
    }
}

/// A loaded voice: its configuration, its model and its phonemizer.
#[derive(Debug, Clone)]
pub struct Voice {
    config: VoiceConfig,
    model: Vits,
    phonemizer: Phonemizer,
}

/// Latent frames in the first window of a request's first piece (about 0.37 s of audio at
/// 22,050 Hz): small, so the first audio of a short phrase comes soon (about 40 ms sooner than
/// with 100 frames for "Thank you for calling.", `examples/first_audio.rs`). Its decoding
/// context (about 15 frames on either side) costs the piece one more window's overhead, so a
/// piece that has less than two first windows of frames is decoded whole instead. It is also the
/// smallest window: a remainder shorter than it goes with the window before.
pub const FIRST_WINDOW_FRAMES: usize = 32;

/// The share of the audio still ahead of the listener that decoding the next window may take
/// (see [`Pace`]).
const WINDOW_SHARE: f64 = 0.5;

/// How fast a request's audio is being made, against how fast it is heard: what sizes its
/// decoder windows after the first. Each window has the decoder's context on either side, decoded
/// and thrown away, so fewer, longer windows cost less; but the listener must not run out of
/// audio while the next one is decoded. The next window is as long as can be decoded, at the
/// speed the last one was, in [`WINDOW_SHARE`] of the audio the listener still has ahead of it
/// (counting as if it began listening with the first part), between [`FIRST_WINDOW_FRAMES`] and
/// [`model::DECODE_WINDOW_FRAMES`]. On an idle machine that is the rest of a sentence in one
/// window; on a loaded one the windows stay short, as the listener needs.
#[derive(Debug, Default)]
struct Pace {
    /// When the first part was given.
    started: Option<Instant>,
    /// Seconds of audio given since.
    given: f64,
    /// Latent frames the last window decoded (its context included) per second.
    frames_per_second: Option<f64>,
}

impl Pace {
    /// Frames the next window may have, before the bounds.
    fn window(&self, context: usize) -> usize {
        match (self.started, self.frames_per_second) {
            (Some(started), Some(speed)) => {
                let ahead = (self.given - started.elapsed().as_secs_f64()).max(0.0);
                ((WINDOW_SHARE * ahead * speed) as usize).saturating_sub(2 * context)
            }
            _ => model::DECODE_WINDOW_FRAMES,
        }
    }
}

/// Part of one piece's audio, as [`Voice::synthesize_parts`] streams it.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Which piece of the text (0, 1, ...) this audio belongs to, counting only pieces with
    /// something to speak.
    pub piece: usize,
    /// That piece, after normalisation.
    pub sentence: Arc<str>,
    /// Its phonemes, as given to the model.
    pub phonemes: Arc<str>,
    /// Mono samples in `[-1, 1]` at the voice's sample rate, following the piece's previous part.
    pub samples: Vec<f32>,
    /// Whether this is the piece's last part.
    pub last: bool,
    /// The words whose audio ends in this part (all the piece's remaining words in its last
    /// part), in order; empty unless asked for ([`Voice::synthesize_pieces_timed`]).
    pub words: Vec<Word>,
}

/// A spoken word and when it is heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word as the normalised text spells it, without the punctuation around it.
    pub word: String,
    /// Seconds from the start of its piece's audio to the first frame of its phonemes.
    pub start: f64,
    /// Seconds from the start of its piece's audio to the end of its last phoneme.
    pub end: f64,
}

/// A word's phonemes as latent frames of its piece: `start .. end`.
#[derive(Debug, Clone)]
struct WordFrames {
    word: String,
    start: usize,
    end: usize,
}

/// The frames of each word of a piece, from the frames of each phoneme id (see
/// [`phoneme_id_starts`]): a word starts with its first phoneme's first id and ends after the
/// pad that follows its last; the spaces and punctuation between words belong to no word.
fn word_frames(
    config: &VoiceConfig,
    phonemized: &Phonemized,
    id_frames: &[usize],
) -> VecDeque<WordFrames> {
    let starts = phoneme_id_starts(config, &phonemized.phonemes);
    // `at[i]`: the frames before id `i`.
    let mut at = Vec::with_capacity(id_frames.len() + 1);
    let mut total = 0;
    at.push(0);
    for &n in id_frames {
        total += n;
        at.push(total);
    }
    let frame_of = |id: usize| at[id.min(at.len() - 1)];
    phonemized
        .words
        .iter()
        .filter_map(|w| {
            let (first, end) = (*starts.get(w.chars.start)?, *starts.get(w.chars.end)?);
            Some(WordFrames {
                word: w.word.clone(),
                start: frame_of(first),
                end: frame_of(end),
            })
        })
        .collect()
}

/// The iterator behind [`Voice::synthesize_parts`].
struct Parts<'a> {
    voice: &'a Voice,
    speaker: Option<u32>,
    scales: Scales,
    limits: Limits,
    /// Seconds of audio of the pieces started so far.
    audio_seconds: f64,
    pieces: Pieces,
    next_piece: usize,
    current: Option<CurrentPiece>,
    pace: Pace,
    failed: bool,
}

/// The piece being decoded, and its windows still to decode.
struct CurrentPiece {
    piece: usize,
    sentence: Arc<str>,
    phonemes: Arc<str>,
    latent: Latent,
    /// The piece's latent frames, and the first not decoded yet.
    frames: usize,
    next: usize,
    words: VecDeque<WordFrames>,
}

impl Parts<'_> {
    fn step(&mut self) -> Result<Option<Part>, Error> {
        let voice = self.voice;
        if self.current.as_ref().is_none_or(|c| c.next >= c.frames) {
            let Some(next) = self.pieces.next(&voice.phonemizer) else {
                return Ok(None);
            };
            let (sentence, phonemized) = next?;
            let phonemes = phonemized.phonemes.as_str();
            let ids = phoneme_ids(&voice.config, phonemes);
            // Piper's ids are `^ _ (p _)* $`: two a phoneme and three more.
            let count = ids.len().saturating_sub(3) / 2;
            if count > self.limits.max_phonemes_per_piece {
                return Err(Error::TooManyPhonemes {
                    phonemes: count,
                    limit: self.limits.max_phonemes_per_piece,
                });
            }
            let plan = voice.model.plan(&ids, self.speaker, self.scales)?;
            let seconds = (plan.total_frames() * voice.model.samples_per_frame()) as f64
                / f64::from(voice.sample_rate());
            if self.audio_seconds + seconds > self.limits.max_audio_seconds {
                return Err(Error::TooMuchAudio {
                    limit: self.limits.max_audio_seconds,
                });
            }
            self.audio_seconds += seconds;
            let words = word_frames(&voice.config, &phonemized, plan.frames());
            let latent = voice.model.latent_of(plan, self.scales)?;
            let frames = latent.z.dim(2)?;
            if frames == 0 {
                return Err(Error::Format("a piece made no latent frames".into()));
            }
            self.current = Some(CurrentPiece {
                piece: self.next_piece,
                sentence: sentence.into(),
                phonemes: phonemes.into(),
                latent,
                frames,
                next: 0,
                words,
            });
            self.next_piece += 1;
        }
        let context = voice.model.decoder_context();
        let current = self.current.as_mut().expect("a piece is being decoded");
        let start = current.next;
        let size = if current.piece == 0 && start == 0 {
            FIRST_WINDOW_FRAMES
        } else {
            self.pace
                .window(context)
                .clamp(FIRST_WINDOW_FRAMES, model::DECODE_WINDOW_FRAMES)
        };
        // A remainder shorter than a first window goes with this one.
        let left = current.frames - start;
        let end = if left < size + FIRST_WINDOW_FRAMES && left <= model::DECODE_WINDOW_FRAMES {
            current.frames
        } else {
            start + size
        };
        current.next = end;
        let decoding = Instant::now();
        let samples = voice.model.decode_frames(&current.latent, start, end)?;
        let decoded = (end + context).min(current.frames) - start.saturating_sub(context);
        self.pace.frames_per_second =
            Some(decoded as f64 / decoding.elapsed().as_secs_f64().max(1e-6));
        self.pace.started.get_or_insert_with(Instant::now);
        self.pace.given += samples.len() as f64 / f64::from(voice.sample_rate());
        let last = end == current.frames;
        let seconds_per_frame =
            voice.model.samples_per_frame() as f64 / f64::from(voice.sample_rate());
        let mut words = Vec::new();
        while let Some(word) = current.words.front()
            && (last || word.end <= end)
        {
            let word = current.words.pop_front().expect("a word is waiting");
            words.push(Word {
                word: word.word,
                start: word.start as f64 * seconds_per_frame,
                end: word.end as f64 * seconds_per_frame,
            });
        }
        Ok(Some(Part {
            piece: current.piece,
            sentence: Arc::clone(&current.sentence),
            phonemes: Arc::clone(&current.phonemes),
            samples,
            last,
            words,
        }))
    }
}

impl Iterator for Parts<'_> {
    type Item = Result<Part, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(part) => part.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One step of [`Voice::synthesize_steps`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Pieces of text made by [`Voice::prepare`] (or [`text::prepare`]), spoken at `rate` times
    /// the request's speed.
    Text { pieces: Vec<String>, rate: f32 },
    /// IPA phonemes given to the model as they are, standing for `word` (for word timings).
    Phonemes {
        ipa: String,
        word: String,
        rate: f32,
    },
    /// Silence.
    Silence { seconds: f64 },
}

/// The iterator behind [`Voice::synthesize_steps`].
struct StepParts<'a> {
    voice: &'a Voice,
    speaker: Option<u32>,
    scales: Scales,
    limits: Limits,
    words: bool,
    steps: VecDeque<Step>,
    current: Option<Parts<'a>>,
    /// The piece index the current step's first piece takes.
    base: usize,
    /// The piece index the next step's first piece takes.
    next_base: usize,
    /// Seconds of audio of the parts given so far.
    audio_seconds: f64,
    failed: bool,
}

impl StepParts<'_> {
    /// The scales of a step at `rate`: the speed (1 / length scale) times the rate, kept within
    /// the speed's range.
    fn scales_at(&self, rate: f32) -> Scales {
        let (lo, hi) = crate::ssml::SPEED_RANGE;
        let speed = (rate / self.scales.length_scale).clamp(lo, hi);
        Scales {
            length_scale: 1.0 / speed,
            ..self.scales
        }
    }

    /// The limits of a step: the audio it may make is what the steps before it left.
    fn limits_left(&self) -> Limits {
        Limits {
            max_audio_seconds: (self.limits.max_audio_seconds - self.audio_seconds).max(0.0),
            ..self.limits
        }
    }

    fn step(&mut self) -> Result<Option<Part>, Error> {
        let voice = self.voice;
        loop {
            if let Some(parts) = &mut self.current {
                match parts.next() {
                    Some(Ok(mut part)) => {
                        part.piece += self.base;
                        self.next_base = self.next_base.max(part.piece + 1);
                        self.audio_seconds +=
                            part.samples.len() as f64 / f64::from(voice.sample_rate());
                        return Ok(Some(part));
                    }
                    // The step was given what was left; the limit to name is the whole one.
                    Some(Err(Error::TooMuchAudio { .. })) => {
                        return Err(Error::TooMuchAudio {
                            limit: self.limits.max_audio_seconds,
                        });
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        self.current = None;
                        self.base = self.next_base;
                    }
                }
            }
            let Some(step) = self.steps.pop_front() else {
                return Ok(None);
            };
            match step {
                Step::Silence { seconds } => {
                    if self.audio_seconds + seconds > self.limits.max_audio_seconds {
                        return Err(Error::TooMuchAudio {
                            limit: self.limits.max_audio_seconds,
                        });
                    }
                    let samples = (seconds * f64::from(voice.sample_rate())).round() as usize;
                    if samples == 0 {
                        continue;
                    }
                    let piece = self.base;
                    self.base += 1;
                    self.next_base = self.base;
                    self.audio_seconds += samples as f64 / f64::from(voice.sample_rate());
                    return Ok(Some(Part {
                        piece,
                        sentence: Arc::from(""),
                        phonemes: Arc::from(""),
                        samples: vec![0.0; samples],
                        last: true,
                        words: Vec::new(),
                    }));
                }
                Step::Text { pieces, rate } => {
                    let pieces = Pieces {
                        waiting: pieces.into(),
                        ready: VecDeque::new(),
                        first: self.base == 0,
                        words: self.words,
                    };
                    let (scales, limits) = (self.scales_at(rate), self.limits_left());
                    self.current = Some(voice.parts_of(pieces, self.speaker, scales, limits)?);
                }
                Step::Phonemes { ipa, word, rate } => {
                    let chars = ipa.chars().count();
                    let words = if self.words && !word.is_empty() && chars > 0 {
                        vec![crate::WordPhonemes {
                            word: word.clone(),
                            chars: 0..chars,
                        }]
                    } else {
                        Vec::new()
                    };
                    let pieces = Pieces {
                        waiting: VecDeque::new(),
                        ready: [(
                            word,
                            Phonemized {
                                phonemes: ipa,
                                words,
                            },
                        )]
                        .into(),
                        first: false,
                        words: self.words,
                    };
                    let (scales, limits) = (self.scales_at(rate), self.limits_left());
                    self.current = Some(voice.parts_of(pieces, self.speaker, scales, limits)?);
                }
            }
        }
    }
}

impl Iterator for StepParts<'_> {
    type Item = Result<Part, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(part) => part.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
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
        // Its resident espeak-ng process, loaded before the first request.
        phonemizer.warm_up();
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

    /// Synthesises `text` piece by piece (its sentences, cut as [`text::pieces`] describes), one
    /// [`Chunk`] a piece: [`Voice::synthesize_parts`] with each piece's parts joined.
    pub fn synthesize<'a>(
        &'a self,
        text: &str,
        speaker: Option<u32>,
        scales: Scales,
    ) -> Result<impl Iterator<Item = Result<Chunk, Error>> + 'a, Error> {
        let mut parts = self.synthesize_parts(text, speaker, scales)?;
        Ok(std::iter::from_fn(move || {
            let mut samples = Vec::new();
            loop {
                match parts.next()? {
                    Ok(part) => {
                        samples.extend_from_slice(&part.samples);
                        if part.last {
                            return Some(Ok(Chunk {
                                sentence: part.sentence.to_string(),
                                phonemes: part.phonemes.to_string(),
                                samples,
                            }));
                        }
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
        }))
    }

    /// Synthesises `text` as a stream of [`Part`]s, for the lowest latency.
    ///
    /// - The text is cut into pieces ([`text::pieces`]). The first piece is phonemised at once,
    ///   on its own. Later pieces are phonemised in batches of about [`PHONEME_BATCH_CHARS`]
    ///   when the iterator reaches them, so a long text never delays the first audio.
    /// - Each piece's latent is made whole (encoder, durations, flows), then decoded in windows:
    ///   the first piece's first window has [`FIRST_WINDOW_FRAMES`] latent frames (the whole
    ///   piece when it has fewer than two such windows), and the next ones are as long as the
    ///   audio already made leaves time for ([`Pace`]), up to [`model::DECODE_WINDOW_FRAMES`].
    ///   The first audio therefore waits for one piece's text side and one short window of the
    ///   decoder, which does most of the arithmetic.
    ///
    /// The text goes through the whole front end ([`Voice::prepare`]); a text with nothing to
    /// speak gives no parts, and one in a script the voice does not read is an error. The work
    /// is bounded by [`Limits::DEFAULT`].
    ///
    /// This blocks: run it off any async executor. An error ends the iterator.
    pub fn synthesize_parts<'a>(
        &'a self,
        text: &str,
        speaker: Option<u32>,
        scales: Scales,
    ) -> Result<impl Iterator<Item = Result<Part, Error>> + 'a, Error> {
        let pieces = match self.prepare(text) {
            Ok(prepared) => prepared.pieces,
            Err(text::TextError::NothingToSpeak) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        self.synthesize_pieces(pieces, speaker, scales, Limits::DEFAULT)
    }

    /// The text front end for this voice's language: [`text::prepare`].
    pub fn prepare(&self, text: &str) -> Result<text::Prepared, text::TextError> {
        text::prepare(text, self.language())
    }

    /// The voice's language code (`en_US`), or its espeak-ng voice when the configuration
    /// names no language.
    pub fn language(&self) -> &str {
        self.config
            .language
            .as_ref()
            .map_or(self.config.espeak.voice.as_str(), |l| l.code.as_str())
    }

    /// [`Voice::synthesize_parts`] for pieces already made by [`Voice::prepare`] (or
    /// [`text::prepare`]), within `limits`: a piece over the phoneme limit, or one that would
    /// take the text over its seconds of audio, ends the iterator with
    /// [`Error::TooManyPhonemes`] or [`Error::TooMuchAudio`] before any of its audio is made.
    pub fn synthesize_pieces(
        &self,
        pieces: Vec<String>,
        speaker: Option<u32>,
        scales: Scales,
        limits: Limits,
    ) -> Result<impl Iterator<Item = Result<Part, Error>> + '_, Error> {
        self.synthesize_pieces_timed(pieces, speaker, scales, limits, false)
    }

    /// [`Voice::synthesize_pieces`], and when `words` is set each [`Part`] also carries the
    /// [`Word`]s whose audio it completes, timed by the duration predictor's frames (so they
    /// follow `length_scale`). Finding the words can cost one more espeak-ng run per batch (see
    /// [`Phonemizer::phonemize_with_words`]), so it is only done when asked.
    pub fn synthesize_pieces_timed(
        &self,
        pieces: Vec<String>,
        speaker: Option<u32>,
        scales: Scales,
        limits: Limits,
        words: bool,
    ) -> Result<impl Iterator<Item = Result<Part, Error>> + '_, Error> {
        let pieces = Pieces {
            waiting: pieces.into(),
            ready: VecDeque::new(),
            first: true,
            words,
        };
        self.parts_of(pieces, speaker, scales, limits)
    }

    fn parts_of(
        &self,
        mut pieces: Pieces,
        speaker: Option<u32>,
        scales: Scales,
        limits: Limits,
    ) -> Result<Parts<'_>, Error> {
        if let Some(id) = speaker
            && id as usize >= self.config.num_speakers.max(self.model.num_speakers())
        {
            return Err(Error::Format(format!("the voice has no speaker {id}")));
        }
        pieces.phonemize_next(&self.phonemizer)?;
        Ok(Parts {
            voice: self,
            speaker,
            scales,
            limits,
            audio_seconds: 0.0,
            pieces,
            next_piece: 0,
            current: None,
            pace: Pace::default(),
            failed: false,
        })
    }

    /// Synthesises [`Step`]s in order (an SSML text, see [`crate::ssml`]): text steps as
    /// [`Voice::synthesize_pieces_timed`] at their rate, phonemes as they are given (espeak-ng is
    /// not run; the voice skips characters its phoneme set lacks), and silences as zero samples
    /// in one [`Part`] with no phonemes. Piece indexes run on across steps. `limits` bound the
    /// whole: a silence that would take the audio over its seconds ends the iterator with
    /// [`Error::TooMuchAudio`] before it is made, as speech does.
    pub fn synthesize_steps(
        &self,
        steps: Vec<Step>,
        speaker: Option<u32>,
        scales: Scales,
        limits: Limits,
        words: bool,
    ) -> Result<impl Iterator<Item = Result<Part, Error>> + '_, Error> {
        if let Some(id) = speaker
            && id as usize >= self.config.num_speakers.max(self.model.num_speakers())
        {
            return Err(Error::Format(format!("the voice has no speaker {id}")));
        }
        Ok(StepParts {
            voice: self,
            speaker,
            scales,
            limits,
            words,
            steps: steps.into(),
            current: None,
            base: 0,
            next_base: 0,
            audio_seconds: 0.0,
            failed: false,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_spans_its_phonemes_ids_and_pads() {
        let config = VoiceConfig::from_json(
            r#"{"audio": {"sample_rate": 16000},
                "phoneme_id_map": {"_": [0], "^": [1], "$": [2], "a": [5], "b": [6], " ": [3]}}"#,
        )
        .unwrap();
        let phonemized = Phonemized {
            phonemes: "ab a".into(),
            words: vec![
                crate::WordPhonemes {
                    word: "ab".into(),
                    chars: 0..2,
                },
                crate::WordPhonemes {
                    word: "a".into(),
                    chars: 3..4,
                },
            ],
        };
        // Ids: ^ _ a _ b _ ␠ _ a _ $
        let frames = [0, 1, 2, 1, 3, 1, 2, 0, 4, 1, 0];
        let words: Vec<(String, usize, usize)> = word_frames(&config, &phonemized, &frames)
            .into_iter()
            .map(|w| (w.word, w.start, w.end))
            .collect();
        assert_eq!(words, [("ab".into(), 1, 8), ("a".into(), 10, 15)]);
    }

    #[test]
    fn the_first_piece_is_phonemised_alone_and_the_rest_in_bounded_batches() {
        let phonemizer = Phonemizer::new("en-us").unwrap();
        let text: String = (1..=40)
            .map(|n| format!("Sentence number {n} is here. "))
            .collect();
        let all = text::pieces(&text);
        let mut pieces = Pieces {
            waiting: all.clone().into(),
            ready: VecDeque::new(),
            first: true,
            words: false,
        };
        pieces.phonemize_next(&phonemizer).unwrap();
        assert_eq!(pieces.ready.len(), 1, "the first piece goes alone");
        let mut batches = vec![1];
        let mut spoken = Vec::new();
        while let Some(piece) = pieces.next(&phonemizer) {
            if pieces.ready.is_empty() && !pieces.waiting.is_empty() {
                // The next call phonemises a batch: record its size once it is made.
                spoken.push(piece.map(|(s, p)| (s, p.phonemes)).unwrap());
                let before = pieces.waiting.len();
                pieces.phonemize_next(&phonemizer).unwrap();
                let batch = before - pieces.waiting.len();
                let chars: usize = pieces.ready.iter().map(|(s, _)| s.chars().count()).sum();
                assert!(
                    chars <= PHONEME_BATCH_CHARS,
                    "{chars} characters in one batch"
                );
                batches.push(batch);
                continue;
            }
            spoken.push(piece.map(|(s, p)| (s, p.phonemes)).unwrap());
        }
        assert!(batches.len() > 2, "{batches:?}");
        // Same pieces, same order, same phonemes as one batch of everything.
        let whole = phonemizer.phonemize_all(&all).unwrap();
        assert_eq!(spoken, all.into_iter().zip(whole).collect::<Vec<_>>());
    }
}
