//! Phonemes from espeak-ng, and the phoneme ids a voice understands.
//!
//! espeak-ng is GPL-3, so it runs as a separate program (`espeak-ng -q --ipa -v VOICE`), never
//! linked. Piper's own phonemizer calls the library clause by clause and appends each clause's
//! punctuation (`,` `;` `:` followed by a space, `.` `?` `!` at the sentence end); this module
//! reproduces that by splitting clauses itself ([`crate::text::split_clauses`]) and sending them to
//! one espeak-ng process, one clause per line, which answers one line per clause.
//!
//! Cost: starting espeak-ng (loading its dictionaries) takes about 10 ms of CPU here, more than
//! it spends on a sentence. So each [`Phonemizer`] keeps *resident* processes between requests,
//! run line-buffered (`stdbuf -oL espeak-ng …`), which answer each line as soon as it is read:
//! a request takes one, writes its clauses and then a sentinel line whose phonemes were learnt
//! when the process started, and reads until the sentinel's answer. Concurrent requests that find
//! none idle start their own, kept afterwards (at most [`MAX_IDLE_RESIDENTS`] idle).
//!
//! A resident is only trusted with the plain case: one non-empty answer line for each clause.
//! Anything else (espeak-ng splitting a long clause, saying nothing for one, dying, not answering
//! by the deadline) discards that process, and the batch goes to the resilient path: one fresh
//! process for the batch, retried in halves as [`Phonemizer::run_resilient`] describes. Where
//! residents cannot start at all (no `stdbuf`, or an espeak-ng that does not answer line by
//! line), only that path is used, and residents are tried again a minute later.
//!
//! A process that has not answered by its deadline ([`Phonemizer::deadline`]: 2 s, plus 1 ms
//! per byte of input, twenty times what espeak-ng needs here even on a loaded machine) is killed,
//! and its input handled as if it had crashed on it, so a hanging espeak-ng holds a worker for
//! seconds, not for ever.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use unicode_normalization::UnicodeNormalization;

use crate::{Error, VoiceConfig, text};

/// Runs espeak-ng for one voice.
#[derive(Debug, Clone)]
pub struct Phonemizer {
    program: PathBuf,
    voice: String,
    /// Resident processes waiting for a request, shared by clones.
    residents: Arc<Residents>,
    /// How long a run may take before its process is killed, besides 1 ms per byte of input.
    base_deadline: Duration,
}

/// [`Phonemizer`]'s default `base_deadline`.
const BASE_DEADLINE: Duration = Duration::from_secs(2);

/// Idle resident processes a [`Phonemizer`] keeps at most; more are stopped when returned.
pub const MAX_IDLE_RESIDENTS: usize = 8;

/// How long residents are not tried again after one failed to start.
const RESIDENT_RETRY: Duration = Duration::from_secs(60);

/// What a sentinel line says: a word no clause is likely to be, spelled out by espeak-ng.
const SENTINEL: &str = "qzxjv";

/// The idle resident processes, and until when residents are not to be started.
#[derive(Debug, Default)]
struct Residents {
    idle: Mutex<Vec<Resident>>,
    broken_until: Mutex<Option<Instant>>,
}

impl Residents {
    /// The idle residents (a poisoned lock still holds them: a panic cannot leave them broken).
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Resident>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An espeak-ng process kept between requests, answering line by line.
#[derive(Debug)]
struct Resident {
    child: Child,
    stdin: ChildStdin,
    /// Its output lines, read by a thread of their own (so that a read can time out).
    lines: mpsc::Receiver<std::io::Result<String>>,
    /// Its answer to the sentinel line.
    sentinel: String,
}

impl Resident {
    /// Starts `command` (espeak-ng, line-buffered) and learns its answer to the sentinel.
    fn start(mut command: Command, deadline: Duration) -> Option<Self> {
        let mut child = command.stderr(Stdio::null()).spawn().ok()?;
        let (stdin, stdout) = (child.stdin.take()?, child.stdout.take()?);
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let end = line.is_err();
                if sender.send(line).is_err() || end {
                    return;
                }
            }
        });
        let mut resident = Self {
            child,
            stdin,
            lines,
            sentinel: String::new(),
        };
        resident.sentinel = resident
            .ask(&clause_lines(&[SENTINEL]), 1, deadline)?
            .pop()?;
        Some(resident)
    }

    /// The answer lines to `input` (`clauses` lines, [`clause_lines`]) followed by a sentinel
    /// line, or `None` when it is not one non-empty line a clause: the process is then not to be
    /// used again. With an empty `sentinel` (while it is being learnt) the first answer line ends
    /// the answer.
    fn ask(&mut self, input: &str, clauses: usize, deadline: Duration) -> Option<Vec<String>> {
        let learning = self.sentinel.is_empty();
        self.stdin.write_all(input.as_bytes()).ok()?;
        if !learning {
            self.stdin
                .write_all(clause_lines(&[SENTINEL]).as_bytes())
                .ok()?;
        }
        self.stdin.flush().ok()?;
        let until = Instant::now() + deadline;
        let mut out = Vec::with_capacity(clauses);
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?.ok()?;
            let line = line.trim();
            if !learning && line == self.sentinel {
                break;
            }
            out.push(line.to_owned());
            if learning || out.len() > clauses {
                break;
            }
        }
        (out.len() == clauses && out.iter().all(|l| !l.is_empty())).then_some(out)
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Phonemizer {
    /// espeak-ng from `PATH`, speaking `voice` (for example `en-us`, from the voice's config).
    pub fn new(voice: &str) -> Result<Self, Error> {
        Self::with_program("espeak-ng", voice)
    }

    /// A specific espeak-ng executable.
    pub fn with_program(program: impl Into<PathBuf>, voice: &str) -> Result<Self, Error> {
        // The voice name becomes a command-line argument: refuse anything that could be read as
        // an option or a path.
        let ok = !voice.is_empty()
            && !voice.starts_with('-')
            && voice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'));
        if !ok {
            return Err(Error::Phonemizer(format!(
                "invalid espeak-ng voice {voice:?}"
            )));
        }
        Ok(Self {
            program: program.into(),
            voice: voice.to_owned(),
            residents: Arc::default(),
            base_deadline: BASE_DEADLINE,
        })
    }

    /// The same, with `base` instead of 2 s before a run's process is killed as hung.
    pub fn with_base_deadline(mut self, base: Duration) -> Self {
        self.base_deadline = base;
        self
    }

    /// How long espeak-ng may take to answer `input_bytes` of input before it is killed.
    pub fn deadline(&self, input_bytes: usize) -> Duration {
        self.base_deadline + Duration::from_millis(input_bytes as u64)
    }

    /// Starts a resident process now, if none is idle, so that the first request does not wait
    /// for one (a voice does this when it is loaded).
    pub fn warm_up(&self) {
        // The lock is let go before a resident starts (and `keep` takes it again).
        let none_idle = self.residents.idle().is_empty();
        if none_idle && let Some(resident) = self.start_resident() {
            self.keep(resident);
        }
    }

    fn start_resident(&self) -> Option<Resident> {
        let broken = || {
            self.residents
                .broken_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if broken().is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let resident = Resident::start(self.command(true), self.base_deadline);
        if resident.is_none() {
            tracing::warn!(
                program = %self.program.display(),
                "espeak-ng cannot run line-buffered (stdbuf -oL); each batch starts a process of its own for a minute"
            );
            *broken() = Some(Instant::now() + RESIDENT_RETRY);
        }
        resident
    }

    /// Returns a resident to the idle ones, or stops it when there are enough.
    fn keep(&self, resident: Resident) {
        let mut idle = self.residents.idle();
        if idle.len() < MAX_IDLE_RESIDENTS {
            idle.push(resident);
        }
    }

    /// One answer line a clause from a resident process, cleaned; `None` when this batch needs
    /// the resilient path.
    fn ask_resident(&self, lines: &[&str]) -> Option<Vec<String>> {
        // An idle one that is still alive (one that died waiting is dropped), or a new one.
        let taken = {
            let mut idle = self.residents.idle();
            std::iter::from_fn(|| idle.pop()).find_map(|mut r| match r.child.try_wait() {
                Ok(None) => Some(r),
                _ => None,
            })
        };
        let mut resident = taken.or_else(|| self.start_resident())?;
        let input = clause_lines(lines);
        let answer = resident.ask(&input, lines.len(), self.deadline(input.len()))?;
        self.keep(resident);
        let answer: Vec<String> = answer.iter().map(|l| strip_language_switches(l)).collect();
        answer.iter().all(|l| !l.is_empty()).then_some(answer)
    }

    /// The answer lines to `lines`: from a resident, or else by the resilient path.
    fn answer(&self, lines: &[&str]) -> Result<Vec<String>, Error> {
        match self.ask_resident(lines) {
            Some(answer) => Ok(answer),
            None => self.run_resilient(lines),
        }
    }

    /// espeak-ng reading clauses on its input and writing their IPA, one line each; with
    /// `line_buffered`, through `stdbuf -oL`, so that each line is answered as soon as it is read.
    fn command(&self, line_buffered: bool) -> Command {
        let mut command = if line_buffered {
            let mut stdbuf = Command::new("stdbuf");
            stdbuf.arg("-oL").arg(&self.program);
            stdbuf
        } else {
            Command::new(&self.program)
        };
        command
            .args(["-q", "--ipa", "-v", &self.voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        command
    }

    fn fresh(&self) -> Result<Child, Error> {
        self.command(false)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Phonemizer(format!("cannot start {}: {e}", self.program.display())))
    }

    /// IPA phonemes of one sentence, with Piper's punctuation.
    pub fn phonemize(&self, sentence: &str) -> Result<String, Error> {
        Ok(self.phonemize_all(&[sentence])?.pop().unwrap_or_default())
    }

    /// IPA phonemes of several sentences, with one espeak-ng process for all of them (a resident
    /// one, see the module's documentation).
    pub fn phonemize_all<S: AsRef<str>>(&self, sentences: &[S]) -> Result<Vec<String>, Error> {
        let phonemized = self.phonemize_sentences(sentences, false)?;
        Ok(phonemized.into_iter().map(|p| p.phonemes).collect())
    }

    /// [`Phonemizer::phonemize_all`] with each sentence's words and the phonemes of each
    /// ([`Phonemized::words`]). espeak-ng separates the words of its answer by spaces, but it
    /// sometimes joins two (`in the` is `ɪnðə`) or reads one as several (`example.com`): when a
    /// clause's word counts differ, its words are phonemised once more, one a line, in a second
    /// process for the whole batch, and the clause's phonemes are shared among them in
    /// proportion ([`align_words`]).
    pub fn phonemize_with_words<S: AsRef<str>>(
        &self,
        sentences: &[S],
    ) -> Result<Vec<Phonemized>, Error> {
        self.phonemize_sentences(sentences, true)
    }

    /// [`Phonemizer::phonemize_with_words`], or without the words.
    pub(crate) fn phonemize_sentences<S: AsRef<str>>(
        &self,
        sentences: &[S],
        with_words: bool,
    ) -> Result<Vec<Phonemized>, Error> {
        let clauses: Vec<Vec<text::Clause>> = sentences
            .iter()
            .map(|s| text::split_clauses(s.as_ref()))
            .collect();
        let lines: Vec<&str> = clauses.iter().flatten().map(|c| c.text.as_str()).collect();
        if lines.is_empty() {
            return Ok(vec![Phonemized::default(); sentences.len()]);
        }
        let mut ipa = self.answer(&lines)?;
        ipa.resize(lines.len(), String::new());
        let words: Vec<Vec<&str>> = if with_words {
            lines.iter().map(|line| text_words(line)).collect()
        } else {
            vec![Vec::new(); lines.len()]
        };
        // Clauses whose word counts differ get the phonemes of each word alone, as weights.
        let mismatched: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                !words[i].is_empty() && ipa[i].split_whitespace().count() != words[i].len()
            })
            .collect();
        let alone_lines: Vec<&str> = mismatched
            .iter()
            .flat_map(|&i| words[i].iter().copied())
            .collect();
        let mut alone = if alone_lines.is_empty() {
            Vec::new()
        } else {
            self.answer(&alone_lines)?
        }
        .into_iter();
        let mut weights: Vec<Option<Vec<usize>>> = vec![None; lines.len()];
        for &i in &mismatched {
            weights[i] = Some(
                words[i]
                    .iter()
                    .map(|word| {
                        let sounds = alone
                            .next()
                            .unwrap_or_default()
                            .chars()
                            .filter(|c| !c.is_whitespace())
                            .count();
                        if sounds > 0 {
                            sounds
                        } else {
                            word.chars().filter(|c| c.is_alphanumeric()).count().max(1)
                        }
                    })
                    .collect(),
            );
        }
        let mut line = 0;
        Ok(clauses
            .iter()
            .map(|sentence| {
                let mut out = Phonemized::default();
                let mut offset = 0;
                for clause in sentence {
                    let clause_ipa = &ipa[line];
                    let ranges = match &weights[line] {
                        Some(weights) => align_words(clause_ipa, weights),
                        None => spoken_words(clause_ipa).into_iter().map(Some).collect(),
                    };
                    for (word, range) in words[line].iter().zip(ranges) {
                        if let Some(range) = range {
                            out.words.push(WordPhonemes {
                                word: (*word).to_owned(),
                                chars: offset + range.start..offset + range.end,
                            });
                        }
                    }
                    line += 1;
                    out.phonemes.push_str(clause_ipa);
                    offset += clause_ipa.chars().count();
                    if let Some(t) = clause.terminator {
                        out.phonemes.push(t);
                        offset += 1;
                        if matches!(t, ',' | ';' | ':') {
                            out.phonemes.push(' ');
                            offset += 1;
                        }
                    }
                }
                out.phonemes.truncate(out.phonemes.trim_end().len());
                out
            })
            .collect())
    }

    /// Phonemes of each of `lines`, exactly one string per line, whatever espeak-ng does:
    ///
    /// - When it answers with more or fewer lines than it was given (it splits a very long clause
    ///   itself, and gives no line for a clause with nothing to say), the lines are sent again
    ///   in halves, down to one line, whose answer lines are joined.
    /// - When it dies (espeak-ng 1.51 aborts on some inputs), the lines are sent again in halves;
    ///   a single line that still kills it is split between its words the same way, and a single
    ///   word that kills it is skipped with a warning, so the rest of the text is still spoken.
    /// - When it hangs (no answer by [`Phonemizer::deadline`]), it is killed and the lines are
    ///   sent again in halves; a single line that still hangs it is skipped whole with a warning
    ///   (not split between its words: each try costs a deadline).
    ///
    /// Only a failure to start espeak-ng at all is an error.
    fn run_resilient(&self, lines: &[&str]) -> Result<Vec<String>, Error> {
        match self.run(lines) {
            Ok(out) if out.len() == lines.len() => return Ok(out),
            Ok(out) if lines.len() == 1 => return Ok(vec![out.join(" ")]),
            Ok(_) => {}
            Err(Failure::Died(why)) if lines.len() == 1 => {
                let words: Vec<&str> = lines[0].split_whitespace().collect();
                if words.len() <= 1 {
                    tracing::warn!(
                        chars = lines[0].chars().count(),
                        %why,
                        "espeak-ng dies on this word; it is skipped"
                    );
                    return Ok(vec![String::new()]);
                }
                let (head, tail) = words.split_at(words.len() / 2);
                let (head, tail) = (head.join(" "), tail.join(" "));
                let mut halves = self.run_resilient(&[&head])?;
                halves.extend(self.run_resilient(&[&tail])?);
                let joined = halves
                    .iter()
                    .filter(|h| !h.is_empty())
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" ");
                return Ok(vec![joined]);
            }
            Err(Failure::Hung(why)) if lines.len() == 1 => {
                tracing::warn!(
                    chars = lines[0].chars().count(),
                    %why,
                    "espeak-ng hangs on this clause; it is skipped"
                );
                return Ok(vec![String::new()]);
            }
            Err(Failure::Died(why) | Failure::Hung(why)) => {
                tracing::warn!(lines = lines.len(), %why, "espeak-ng failed; retrying in halves");
            }
            Err(Failure::Start(e)) => return Err(e),
        }
        let (head, tail) = lines.split_at(lines.len() / 2);
        let mut out = self.run_resilient(head)?;
        out.extend(self.run_resilient(tail)?);
        Ok(out)
    }

    /// Sends `lines` to one fresh espeak-ng process; returns its non-empty output lines, cleaned.
    fn run(&self, lines: &[&str]) -> Result<Vec<String>, Failure> {
        let input = clause_lines(lines);
        let deadline = self.deadline(input.len());
        let stdout = communicate(self.fresh().map_err(Failure::Start)?, input, deadline)?;
        Ok(stdout
            .lines()
            .map(|l| strip_language_switches(l.trim()))
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// A sentence's phonemes, and which of them belong to which word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phonemized {
    /// The sentence's phonemes, as [`Phonemizer::phonemize_all`] gives them.
    pub phonemes: String,
    /// Its words in order, each with its phonemes; a word espeak-ng said nothing for is left out.
    pub words: Vec<WordPhonemes>,
}

/// One word of a sentence and where its phonemes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordPhonemes {
    /// The word as the normalised text spells it, without the punctuation around it.
    pub word: String,
    /// Its phonemes: a range of characters (not bytes) of [`Phonemized::phonemes`], never
    /// empty, never overlapping another word's.
    pub chars: std::ops::Range<usize>,
}

/// The words of a clause: its tokens that have a letter or a digit, without the punctuation
/// around them (punctuation is not a word).
fn text_words(clause: &str) -> Vec<&str> {
    clause
        .split_whitespace()
        .map(|token| token.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty())
        .collect()
}

/// The character ranges of the space-separated words of espeak-ng's answer for a clause.
fn spoken_words(ipa: &str) -> Vec<std::ops::Range<usize>> {
    let mut words = Vec::new();
    let mut start = None;
    let mut end = 0;
    for (i, c) in ipa.chars().enumerate() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                words.push(s..i);
            }
        } else if start.is_none() {
            start = Some(i);
        }
        end = i + 1;
    }
    if let Some(s) = start {
        words.push(s..end);
    }
    words
}

/// Shares a clause's phonemes `ipa` among words whose count differs from espeak-ng's, given each
/// word's weight (its phonemes when spoken alone). A space in espeak-ng's answer is always
/// between words, so its words' starts are anchors: with fewer of espeak-ng's words than words
/// (it joined some), each of its word starts is matched to the nearest cut of the proportional
/// share (the same share of the clause's sounds, characters other than spaces, as of the weights
/// before it), in order; with more (it read a word as several), each cut is moved to the nearest
/// of its word starts, in order. Between anchors, the sounds are shared in proportion to the
/// weights of the words there, each keeping at least one sound while there are enough. `None` for
/// a word left with none.
fn align_words(ipa: &str, weights: &[usize]) -> Vec<Option<std::ops::Range<usize>>> {
    let sounds: Vec<usize> = ipa
        .chars()
        .enumerate()
        .filter(|(_, c)| !c.is_whitespace())
        .map(|(i, _)| i)
        .collect();
    let (n, k) = (sounds.len(), weights.len());
    if k == 0 {
        return Vec::new();
    }
    // The sound index at which each of espeak-ng's words after the first starts.
    let boundaries: Vec<usize> = spoken_words(ipa)
        .iter()
        .skip(1)
        .map(|w| sounds.partition_point(|&s| s < w.start))
        .collect();
    let total = weights.iter().sum::<usize>().max(1) as f64;
    // `proportional[i - 1]`: where cut `i` (between word `i - 1` and word `i`) falls by weight.
    let mut acc = 0;
    let proportional: Vec<f64> = weights[..k - 1]
        .iter()
        .map(|w| {
            acc += w;
            acc as f64 / total * n as f64
        })
        .collect();
    let distance = |a: f64, b: usize| (a - b as f64).abs();
    let inner = k - 1;
    let mut anchors = vec![(0, 0)];
    if boundaries.len() <= inner {
        let mut next = 1;
        for (j, &start) in boundaries.iter().enumerate() {
            let last = inner - (boundaries.len() - 1 - j);
            let cut = (next..=last)
                .min_by(|&a, &b| {
                    distance(proportional[a - 1], start)
                        .total_cmp(&distance(proportional[b - 1], start))
                })
                .expect("at least as many cuts as starts");
            anchors.push((cut, start));
            next = cut + 1;
        }
    } else {
        let mut next = 0;
        for cut in 1..=inner {
            let last = boundaries.len() - 1 - (inner - cut);
            let best = (next..=last)
                .min_by(|&a, &b| {
                    distance(proportional[cut - 1], boundaries[a])
                        .total_cmp(&distance(proportional[cut - 1], boundaries[b]))
                })
                .expect("more starts than cuts");
            anchors.push((cut, boundaries[best]));
            next = best + 1;
        }
    }
    anchors.push((k, n));
    let mut bounds = vec![0; k + 1];
    for pair in anchors.windows(2) {
        let ((ia, pa), (ib, pb)) = (pair[0], pair[1]);
        bounds[ia] = pa;
        bounds[ib] = pb;
        let local = weights[ia..ib].iter().sum::<usize>().max(1) as f64;
        let mut acc = 0;
        for i in ia + 1..ib {
            acc += weights[i - 1];
            let cut = (pa as f64 + acc as f64 / local * pb.saturating_sub(pa) as f64).round();
            let cut = cut as usize;
            let (lo, hi) = (bounds[i - 1] + 1, pb.saturating_sub(ib - i));
            bounds[i] = if lo <= hi {
                cut.clamp(lo, hi)
            } else {
                cut.clamp(bounds[i - 1], pb.max(bounds[i - 1]))
            };
        }
    }
    bounds
        .windows(2)
        .map(|b| (b[1] > b[0]).then(|| sounds[b[0]]..sounds[b[1] - 1] + 1))
        .collect()
}

/// How one espeak-ng run failed.
#[derive(Debug)]
enum Failure {
    /// The program could not be started: nothing will work until it can.
    Start(Error),
    /// It started and then failed on this input (a crash, a bad exit, unreadable output).
    Died(String),
    /// It did not answer by its deadline, and was killed.
    Hung(String),
}

/// espeak-ng's input for `lines`: one line each. A newline inside a clause would desynchronise
/// the one-line-per-clause answer, so it becomes a space.
fn clause_lines(lines: &[&str]) -> String {
    let mut input = String::new();
    for line in lines {
        input.push_str(&line.replace(['\n', '\r'], " "));
        input.push('\n');
    }
    input
}

/// Stops a process that will not be used and collects its exit status.
fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Writes `input` to espeak-ng, closes its input and returns everything it printed, or kills it
/// when it has not finished within `deadline`.
fn communicate(mut child: Child, input: String, deadline: Duration) -> Result<String, Failure> {
    use std::io::Read;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Written and read on other threads: espeak-ng answers while it reads, and a large input
    // would otherwise fill both pipes and deadlock. The pipes close when the process ends (or is
    // killed), which ends the readers.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let (sender, answer) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = sender.send(stdout.read_to_end(&mut text).map(|_| text));
    });
    let stdout = match answer.recv_timeout(deadline) {
        Ok(read) => read.map_err(|e| Failure::Died(format!("reading espeak-ng: {e}"))),
        Err(_) => {
            // The threads end by themselves once the pipes close; they are not waited for.
            reap(child);
            return Err(Failure::Hung(format!(
                "espeak-ng gave no answer within {} ms and was killed",
                deadline.as_millis()
            )));
        }
    };
    let status = child
        .wait()
        .map_err(|e| Failure::Died(format!("espeak-ng failed: {e}")));
    let stderr = errors.join().unwrap_or_default();
    // A write error (a broken pipe) only means the process died first: its status says why.
    let written = writer.join();
    let stdout = stdout?;
    let status = status?;
    if !status.success() {
        return Err(Failure::Died(format!(
            "espeak-ng exited with {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::Died(format!("writing to espeak-ng: {e}"))),
        Err(_) => return Err(Failure::Died("writing to espeak-ng panicked".into())),
    }
    String::from_utf8(stdout).map_err(|_| Failure::Died("espeak-ng wrote invalid UTF-8".into()))
}

/// Removes espeak-ng's language-switch markers such as `(en)` or `(fr)`, as Piper does.
fn strip_language_switches(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('(') {
        match rest[open..].find(')') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// Piper's id sequence for a phoneme string: `^ _ (p _)* $`, after Unicode NFD. Phonemes the
/// voice does not know are skipped, as Piper does.
pub fn phoneme_ids(config: &VoiceConfig, phonemes: &str) -> Vec<i64> {
    let id = |c: char| config.ids_of(c).unwrap_or(&[]);
    let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
    ids.extend_from_slice(id('^'));
    ids.extend_from_slice(id('_'));
    for c in phonemes.nfd() {
        if let Some(p) = config.ids_of(c) {
            ids.extend_from_slice(p);
            ids.extend_from_slice(id('_'));
        }
    }
    ids.extend_from_slice(id('$'));
    ids
}

/// Where each character of `phonemes` starts in [`phoneme_ids`]'s sequence: one index a
/// character (its first id, or where it would be when the voice does not know it), and one more
/// for the final `$`. A character's ids, with the pad after each, end where the next begins.
pub fn phoneme_id_starts(config: &VoiceConfig, phonemes: &str) -> Vec<usize> {
    let len = |c: char| config.ids_of(c).map_or(0, <[i64]>::len);
    let mut at = len('^') + len('_');
    let mut starts = Vec::with_capacity(phonemes.len() + 1);
    for c in phonemes.chars() {
        starts.push(at);
        for d in std::iter::once(c).nfd() {
            if let Some(p) = config.ids_of(d) {
                at += p.len() + len('_');
            }
        }
    }
    starts.push(at);
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_switches_are_removed() {
        assert_eq!(strip_language_switches("(en)hˈɛloʊ(fr) wɔʁ"), "hˈɛloʊ wɔʁ");
        assert_eq!(strip_language_switches("plain"), "plain");
    }

    #[test]
    fn ids_are_interspersed_and_nfd_normalised() {
        let config = VoiceConfig::from_json(
            r#"{"audio": {"sample_rate": 16000},
                "phoneme_id_map": {"_": [0], "^": [1], "$": [2], "a": [5], " ": [3], "\u0303": [9]}}"#,
        )
        .unwrap();
        // "ã" is one precomposed character; NFD splits it into "a" and a combining tilde.
        assert_eq!(
            phoneme_ids(&config, "a ã"),
            vec![1, 0, 5, 0, 3, 0, 5, 0, 9, 0, 2]
        );
        // Unknown phonemes are skipped.
        assert_eq!(phoneme_ids(&config, "ax"), vec![1, 0, 5, 0, 2]);
        // Each character's first id, and the final `$`.
        assert_eq!(phoneme_id_starts(&config, "a ã"), vec![2, 4, 6, 10]);
        assert_eq!(phoneme_id_starts(&config, "ax"), vec![2, 4, 4]);
    }

    fn idle_pids(p: &Phonemizer) -> Vec<u32> {
        let idle = p.residents.idle.lock().unwrap();
        idle.iter().map(|r| r.child.id()).collect()
    }

    #[test]
    fn a_resident_process_answers_request_after_request_and_a_dead_one_is_replaced() {
        let p = Phonemizer::new("en-us").unwrap();
        assert!(idle_pids(&p).is_empty());
        p.warm_up();
        let first = idle_pids(&p);
        assert_eq!(first.len(), 1, "warming up starts one");
        let ipa = p.phonemize("Hello there.").unwrap();
        assert_eq!(ipa, "həlˈoʊ ðˈɛɹ.");
        // The same process answered, and waits for the next request.
        assert_eq!(idle_pids(&p), first);
        assert_eq!(
            p.phonemize_all(&["Hello there.", "Goodbye."]).unwrap()[0],
            ipa
        );
        assert_eq!(idle_pids(&p), first);

        // The resident dies: the next request is answered all the same, and a new one waits.
        {
            let mut idle = p.residents.idle.lock().unwrap();
            idle[0].child.kill().unwrap();
            idle[0].child.wait().unwrap();
        }
        assert_eq!(p.phonemize("Hello there.").unwrap(), ipa);
        let now = idle_pids(&p);
        assert_eq!(now.len(), 1);
        assert_ne!(now, first);
    }

    #[test]
    fn a_clause_espeak_splits_or_leaves_empty_goes_the_resilient_way() {
        let p = Phonemizer::new("en-us").unwrap();
        // A clause with nothing to say gives no answer line: the resident is not trusted with
        // the batch, and the resilient path keeps one string a clause.
        let out = p.phonemize_all(&["Hello.", "...", "Goodbye."]).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], p.phonemize("Hello.").unwrap());
        assert_eq!(out[2], p.phonemize("Goodbye.").unwrap());
    }

    #[test]
    fn residents_are_stopped_with_the_last_clone() {
        let p = Phonemizer::new("en-us").unwrap();
        p.warm_up();
        let clone = p.clone();
        let pid = idle_pids(&p)[0];
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        drop(p);
        assert!(proc_dir.exists(), "a clone still holds it");
        drop(clone);
        assert!(!proc_dir.exists(), "killed and reaped");
    }

    #[test]
    fn espeak_dying_never_fails_a_batch() {
        let p = Phonemizer::new("en-us").unwrap();
        // Both make espeak-ng 1.51 abort ("stack smashing detected"), on their own and inside a
        // clause of other words.
        let quotes = "s'".repeat(220);
        let dots = format!("{}a", "a.".repeat(100));
        assert!(matches!(p.run(&[&quotes]), Err(Failure::Died(_))));
        let hello = p.phonemize("Hello there.").unwrap();
        let goodbye = p.phonemize("Goodbye.").unwrap();
        let out = p
            .phonemize_all(&[
                "Hello there.",
                &quotes,
                &format!("One {dots} two."),
                "Goodbye.",
            ])
            .unwrap();
        assert_eq!(out[0], hello);
        assert_eq!(out[1], "", "the word it dies on is skipped");
        assert!(
            out[2].starts_with("wˈʌn") && out[2].ends_with("tˈuː."),
            "the words around it are spoken: {}",
            out[2]
        );
        assert_eq!(out[3], goodbye);
    }

    #[test]
    fn a_hanging_espeak_is_killed_and_its_clause_skipped() {
        // espeak-ng, except that it hangs (and never answers) on any input with "freeze" in it.
        let script = std::env::temp_dir().join(format!("hanging-espeak-{}", std::process::id()));
        std::fs::write(
            &script,
            "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in *freeze*) exec sleep 600;; esac\n\
             printf '%s\\n' \"$input\" | espeak-ng \"$@\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let real = Phonemizer::new("en-us").unwrap();
        let p = Phonemizer::with_program(&script, "en-us")
            .unwrap()
            .with_base_deadline(Duration::from_millis(300));
        assert!(matches!(p.run(&["Please freeze."]), Err(Failure::Hung(_))));
        let started = std::time::Instant::now();
        let out = p
            .phonemize_all(&["Hello there.", "Please freeze now.", "Goodbye."])
            .unwrap();
        let took = started.elapsed();
        assert_eq!(out[0], real.phonemize("Hello there.").unwrap());
        assert_eq!(
            out[1], ".",
            "the clause it hangs on is skipped, not its full stop"
        );
        assert_eq!(out[2], real.phonemize("Goodbye.").unwrap());
        // Three lines: the batch, the half with the clause, the clause alone; each a deadline.
        assert!(took < Duration::from_secs(10), "took {took:?}");
        std::fs::remove_file(&script).unwrap();
    }

    /// Random Unicode after the text front end never makes espeak-ng die.
    #[test]
    fn espeak_never_dies_on_prepared_text() {
        let p = Phonemizer::new("en-us").unwrap();
        let mut generator = text::random_text::Gen::new(7);
        for _ in 0..150 {
            let len = generator.below(800) as usize;
            let random = generator.text(len);
            let clauses: Vec<String> = text::pieces(&random)
                .iter()
                .flat_map(|piece| text::split_clauses(piece))
                .map(|clause| clause.text)
                .collect();
            let lines: Vec<&str> = clauses.iter().map(String::as_str).collect();
            if lines.is_empty() {
                continue;
            }
            if let Err(Failure::Died(why)) = p.run(&lines) {
                panic!("{why} on {lines:?}");
            }
        }
    }

    #[test]
    fn words_are_espeaks_when_the_counts_agree() {
        assert_eq!(
            text_words("Hello, world -- it's 5 o'clock!"),
            ["Hello", "world", "it's", "5", "o'clock"]
        );
        assert_eq!(spoken_words("həlˈoʊ  wˈɜːld"), [0..6, 8..14]);
        let p = Phonemizer::new("en-us").unwrap();
        let out = p
            .phonemize_with_words(&["Hello there, my friend."])
            .unwrap();
        let ipa: Vec<char> = out[0].phonemes.chars().collect();
        let said: Vec<(String, String)> = out[0]
            .words
            .iter()
            .map(|w| (w.word.clone(), ipa[w.chars.clone()].iter().collect()))
            .collect();
        assert_eq!(
            said,
            [
                ("Hello".into(), "həlˈoʊ".into()),
                ("there".into(), "ðˈɛɹ".into()),
                ("my".into(), "maɪ".into()),
                ("friend".into(), "fɹˈɛnd".into()),
            ]
        );
        assert_eq!(
            out[0].phonemes,
            p.phonemize("Hello there, my friend.").unwrap()
        );
    }

    #[test]
    fn joined_and_split_words_are_shared_in_proportion() {
        // espeak-ng says "in the" as one word: the cut falls between them.
        let ranges = align_words("wˈɔːk ɪnðə pˈɑːɹk", &[5, 2, 2, 5]);
        let ipa: Vec<char> = "wˈɔːk ɪnðə pˈɑːɹk".chars().collect();
        let said: Vec<String> = ranges
            .iter()
            .map(|r| ipa[r.clone().unwrap()].iter().collect())
            .collect();
        assert_eq!(said, ["wˈɔːk", "ɪn", "ðə", "pˈɑːɹk"]);
        // espeak-ng reads one word as three: the cuts go to its word starts.
        let ipa: Vec<char> = "ɡˌoʊ tʊ ɛɡzˈæmpəl dˈɑːt kˈɑːm nˈaʊ".chars().collect();
        let said: Vec<String> = align_words(&ipa.iter().collect::<String>(), &[3, 2, 15, 3])
            .iter()
            .map(|r| ipa[r.clone().unwrap()].iter().collect())
            .collect();
        assert_eq!(said, ["ɡˌoʊ", "tʊ", "ɛɡzˈæmpəl dˈɑːt kˈɑːm", "nˈaʊ"]);
        // More words than sounds: one gets none; never an empty or reversed range.
        let ranges = align_words("ab", &[1, 1, 1]);
        assert_eq!(ranges, [Some(0..1), None, Some(1..2)]);
        let p = Phonemizer::new("en-us").unwrap();
        let out = p
            .phonemize_with_words(&["Go for a walk in the park at example.com now."])
            .unwrap();
        let words: Vec<&str> = out[0].words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(
            words,
            [
                "Go",
                "for",
                "a",
                "walk",
                "in",
                "the",
                "park",
                "at",
                "example.com",
                "now"
            ]
        );
        for pair in out[0].words.windows(2) {
            assert!(pair[0].chars.end <= pair[1].chars.start, "{out:?}");
        }
        let ipa: Vec<char> = out[0].phonemes.chars().collect();
        let example = &out[0].words[8];
        let said: String = ipa[example.chars.clone()].iter().collect();
        assert!(said.contains("kˈɑːm"), "{said}");
    }

    #[test]
    fn suspicious_voice_names_are_refused() {
        assert!(Phonemizer::new("en-us").is_ok());
        assert!(Phonemizer::new("--path=/tmp").is_err());
        assert!(Phonemizer::new("en us").is_err());
        assert!(Phonemizer::new("").is_err());
    }
}
