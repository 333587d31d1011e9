//! Phonemes from espeak-ng, and the phoneme ids a voice understands.
//!
//! espeak-ng is GPL-3, so it runs as a separate program (`espeak-ng -q --ipa -v VOICE`), never
//! linked. Piper's own phonemizer calls the library clause by clause and appends each clause's
//! punctuation (`,` `;` `:` followed by a space, `.` `?` `!` at the sentence end); this module
//! reproduces that by splitting clauses itself ([`crate::text::split_clauses`]) and sending them to
//! one espeak-ng process, one clause per line, which answers one line per clause.
//!
//! Cost: one process per batch of sentences, not one per clause. Starting espeak-ng (loading its
//! dictionaries) takes about 10 ms here, so each [`Phonemizer`] keeps one process already started
//! and waiting on its input: a request takes it, and once the request has its answer a
//! replacement starts, initialising before the next request. A pre-started process that has
//! died is replaced transparently; concurrent requests that find none start their own.

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use unicode_normalization::UnicodeNormalization;

use crate::{Error, VoiceConfig, text};

/// Runs espeak-ng for one voice.
#[derive(Debug, Clone)]
pub struct Phonemizer {
    program: PathBuf,
    voice: String,
    /// A process started ahead of the next request, shared by clones.
    ready: Arc<ReadyProcess>,
}

/// At most one espeak-ng process, started and waiting for its input. Killed when dropped.
#[derive(Debug, Default)]
struct ReadyProcess(Mutex<Option<Child>>);

impl ReadyProcess {
    fn take(&self) -> Option<Child> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Keeps `child` unless a process is already waiting (a concurrent request put one there
    /// first), in which case `child` is stopped.
    fn put(&self, child: Child) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(child);
        } else {
            drop(slot);
            reap(child);
        }
    }
}

impl Drop for ReadyProcess {
    fn drop(&mut self) {
        if let Some(child) = self.take() {
            reap(child);
        }
    }
}

/// Stops a process that will not be used and collects its exit status.
fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
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
        let phonemizer = Self {
            program: program.into(),
            voice: voice.to_owned(),
            ready: Arc::default(),
        };
        phonemizer.start_ahead();
        Ok(phonemizer)
    }

    fn spawn(&self) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(["-q", "--ipa", "-v", &self.voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Starts the process the next request will use, unless one is already waiting. A failure
    /// here is left for that request to report, when it starts a process of its own.
    fn start_ahead(&self) {
        if self.ready.is_empty()
            && let Ok(child) = self.spawn()
        {
            self.ready.put(child);
        }
    }

    /// The pre-started process if it is still alive (and `true`), or a new one (and `false`).
    fn process(&self) -> Result<(Child, bool), Error> {
        let ready = self
            .ready
            .take()
            .and_then(|mut child| match child.try_wait() {
                Ok(None) => Some(child),
                _ => {
                    reap(child);
                    None
                }
            });
        match ready {
            Some(child) => Ok((child, true)),
            None => Ok((self.fresh()?, false)),
        }
    }

    fn fresh(&self) -> Result<Child, Error> {
        self.spawn()
            .map_err(|e| Error::Phonemizer(format!("cannot start {}: {e}", self.program.display())))
    }

    /// IPA phonemes of one sentence, with Piper's punctuation.
    pub fn phonemize(&self, sentence: &str) -> Result<String, Error> {
        Ok(self.phonemize_all(&[sentence])?.pop().unwrap_or_default())
    }

    /// IPA phonemes of several sentences, with one espeak-ng process for all of them.
    pub fn phonemize_all<S: AsRef<str>>(&self, sentences: &[S]) -> Result<Vec<String>, Error> {
        let clauses: Vec<Vec<text::Clause>> = sentences
            .iter()
            .map(|s| text::split_clauses(s.as_ref()))
            .collect();
        let lines: Vec<&str> = clauses.iter().flatten().map(|c| c.text.as_str()).collect();
        if lines.is_empty() {
            return Ok(vec![String::new(); sentences.len()]);
        }
        let ipa = self.run_resilient(&lines)?;
        let mut ipa = ipa.into_iter();
        Ok(clauses
            .iter()
            .map(|sentence| {
                let mut out = String::new();
                for clause in sentence {
                    out.push_str(&ipa.next().unwrap_or_default());
                    if let Some(t) = clause.terminator {
                        out.push(t);
                        if matches!(t, ',' | ';' | ':') {
                            out.push(' ');
                        }
                    }
                }
                out.trim_end().to_owned()
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
            Err(Failure::Died(why)) => {
                tracing::warn!(lines = lines.len(), %why, "espeak-ng died; retrying in halves");
            }
            Err(Failure::Start(e)) => return Err(e),
        }
        let (head, tail) = lines.split_at(lines.len() / 2);
        let mut out = self.run_resilient(head)?;
        out.extend(self.run_resilient(tail)?);
        Ok(out)
    }

    /// Sends `lines` to one espeak-ng process; returns its non-empty output lines, cleaned.
    fn run(&self, lines: &[&str]) -> Result<Vec<String>, Failure> {
        let mut input = String::new();
        for line in lines {
            // A newline inside a clause would desynchronise the one-line-per-clause answer.
            input.push_str(&line.replace(['\n', '\r'], " "));
            input.push('\n');
        }
        let (child, pre_started) = self.process().map_err(Failure::Start)?;
        let output = match communicate(child, input.clone()) {
            // A pre-started process can die between the liveness check and the write: the
            // request then gets one fresh process before it fails.
            Err(_) if pre_started => communicate(self.fresh().map_err(Failure::Start)?, input),
            result => result,
        };
        // The next request's process starts after this one's answer, off its critical path.
        self.start_ahead();
        let stdout = output?;
        Ok(stdout
            .lines()
            .map(|l| strip_language_switches(l.trim()))
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// How one espeak-ng run failed.
#[derive(Debug)]
enum Failure {
    /// The program could not be started: nothing will work until it can.
    Start(Error),
    /// It started and then failed on this input (a crash, a bad exit, unreadable output).
    Died(String),
}

/// Writes `input` to espeak-ng, closes its input and returns everything it printed.
fn communicate(mut child: Child, input: String) -> Result<String, Failure> {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Written from another thread: espeak-ng answers while it reads, and a large input would
    // otherwise fill both pipes and deadlock.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|e| Failure::Died(format!("espeak-ng failed: {e}")))?;
    // A write error (a broken pipe) only means the process died first: its status says why.
    let written = writer.join();
    if !output.status.success() {
        return Err(Failure::Died(format!(
            "espeak-ng exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::Died(format!("writing to espeak-ng: {e}"))),
        Err(_) => return Err(Failure::Died("writing to espeak-ng panicked".into())),
    }
    String::from_utf8(output.stdout)
        .map_err(|_| Failure::Died("espeak-ng wrote invalid UTF-8".into()))
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
    }

    fn ready_pid(p: &Phonemizer) -> Option<u32> {
        p.ready.0.lock().unwrap().as_ref().map(Child::id)
    }

    #[test]
    fn a_process_is_started_ahead_and_a_dead_one_is_replaced() {
        let p = Phonemizer::new("en-us").unwrap();
        let first = ready_pid(&p).expect("a process is started with the phonemizer");
        let ipa = p.phonemize("Hello there.").unwrap();
        assert_eq!(ipa, "həlˈoʊ ðˈɛɹ.");
        let second = ready_pid(&p).expect("the next process is started at once");
        assert_ne!(first, second, "the pre-started process served the request");

        // The waiting process dies: the next request starts its own and gives the same answer.
        {
            let mut ready = p.ready.0.lock().unwrap();
            let child = ready.as_mut().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
        }
        assert_eq!(p.phonemize("Hello there.").unwrap(), ipa);
        assert!(ready_pid(&p).is_some());
    }

    #[test]
    fn the_waiting_process_is_stopped_with_the_last_clone() {
        let p = Phonemizer::new("en-us").unwrap();
        let clone = p.clone();
        let pid = ready_pid(&p).unwrap();
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
    fn suspicious_voice_names_are_refused() {
        assert!(Phonemizer::new("en-us").is_ok());
        assert!(Phonemizer::new("--path=/tmp").is_err());
        assert!(Phonemizer::new("en us").is_err());
        assert!(Phonemizer::new("").is_err());
    }
}
