//! Word timings, checked by ear rather than by the code that makes them: three sentences are
//! synthesised with `timestamps`, the audio is cut at the reported word boundaries, and Whisper
//! tiny.en transcribes each word's window (padded by [`PAD`] on either side) and each window of
//! four consecutive words. A word counts as recognised when the transcript of its own window
//! has it; a group window must have most of its words and none of the longer words around it
//! (a shifted or stretched timing would put them there). The timings must also be ordered, not
//! overlap, lie within the audio, arrive no later than the message with their audio, and stretch
//! with `speed`.

#![allow(
    clippy::print_stdout,
    reason = "the transcripts and the accuracy are the evidence, printed with --no-capture"
)]

use std::sync::{Arc, Mutex};

use listener::{Listener, default_model_dir, ensure_model, normalize};
use sonora_proto::tts::v1::{AudioFormat, SynthesizeRequest, WordTiming};

use crate::synthesis::{Service, start};

const TEXT: &str = "The weather is lovely today. My brother bought a new bicycle last summer. \
                    Please send the report to my office before the meeting starts.";

/// Words in a group window.
const GROUP: usize = 4;

/// Seconds added on either side of a word's window before it is transcribed.
const PAD: f64 = 0.05;

struct Timed {
    samples: Vec<f32>,
    rate: u32,
    words: Vec<WordTiming>,
    audio_seconds: f64,
}

async fn timed(svc: &mut Service, text: &str, speed: f32) -> Timed {
    let mut stream = svc
        .client
        .synthesize(SynthesizeRequest {
            text: text.to_owned(),
            format: AudioFormat::Pcm16.into(),
            speed,
            // Deterministic durations, so that the speeds can be compared word by word.
            noise_w: Some(0.0),
            timestamps: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut pcm, mut rate, mut words, mut audio_seconds) = (Vec::new(), 0, Vec::new(), 0.0);
    while let Some(message) = stream.message().await.unwrap() {
        pcm.extend(&message.audio);
        rate = message.sample_rate;
        let heard_so_far = (pcm.len() / 2) as f64 / f64::from(rate);
        for word in &message.words {
            assert!(
                word.end <= heard_so_far + 1e-6,
                "{word:?} arrives before its audio ({heard_so_far} s sent)"
            );
        }
        words.extend(message.words);
        if message.done {
            audio_seconds = message.audio_seconds;
        }
    }
    let samples: Vec<f32> = pcm
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    Timed {
        samples,
        rate,
        words,
        audio_seconds,
    }
}

fn expected_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '$')
                .to_owned()
        })
        .collect()
}

fn check_shape(t: &Timed, text: &str) {
    let words: Vec<&str> = t.words.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(words, expected_words(text));
    let duration = t.samples.len() as f64 / f64::from(t.rate);
    assert!(
        (duration - t.audio_seconds).abs() < 1e-3,
        "{duration} vs {}",
        t.audio_seconds
    );
    for w in &t.words {
        assert!(
            0.0 <= w.start && w.start < w.end && w.end <= duration,
            "{w:?} in {duration} s"
        );
    }
    for pair in t.words.windows(2) {
        assert!(pair[0].end <= pair[1].start, "overlap: {pair:?}");
    }
}

fn window(t: &Timed, start: f64, end: f64) -> Vec<f32> {
    let at = |s: f64| ((s.max(0.0) * f64::from(t.rate)) as usize).min(t.samples.len());
    t.samples[at(start - PAD)..at(end + PAD)].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_timings_are_where_whisper_hears_the_words() {
    let dir = default_model_dir();
    let listener = tokio::task::spawn_blocking(move || {
        ensure_model(&dir).expect("the Whisper model is fetched");
        Listener::load(&dir).expect("the Whisper model loads")
    })
    .await
    .unwrap();
    let listener = Arc::new(Mutex::new(listener));
    let mut svc = start(&[]).await;

    // Words are named as written, a number or an amount over the times of all its words.
    let amounts = "I paid $5 for 3 books on the 21st.";
    let t = timed(&mut svc, amounts, 1.0).await;
    check_shape(&t, amounts);

    // Speed scales every timing (length_scale = 1 / speed: 2 against 0.5, four times).
    let slow = timed(&mut svc, TEXT, 0.5).await;
    let fast = timed(&mut svc, TEXT, 2.0).await;
    check_shape(&slow, TEXT);
    check_shape(&fast, TEXT);
    // Each phoneme's frames are rounded up, which lengthens fast speech a little: the audio is
    // somewhat less than four times as long, and every word's times follow the audio's ratio.
    let ratio = slow.audio_seconds / fast.audio_seconds;
    assert!((2.5..=4.4).contains(&ratio), "audio {ratio}");
    for (s, f) in slow.words.iter().zip(&fast.words) {
        assert!(s.end - s.start > 1.5 * (f.end - f.start), "{s:?} vs {f:?}");
        let r = s.end / f.end;
        assert!(
            (r / ratio - 1.0).abs() < 0.25,
            "{s:?} vs {f:?}: {r} against {ratio}"
        );
    }
    let ends = slow.words.last().unwrap().end / fast.words.last().unwrap().end;
    println!("speed 0.5 / 2.0: audio {ratio:.2}x, last word's end {ends:.2}x");

    let t = timed(&mut svc, TEXT, 1.0).await;
    check_shape(&t, TEXT);
    let hear = |clip: Vec<f32>, rate: u32| {
        let listener = Arc::clone(&listener);
        async move {
            tokio::task::spawn_blocking(move || {
                normalize(&listener.lock().unwrap().transcribe(&clip, rate).unwrap())
            })
            .await
            .unwrap()
        }
    };

    // Each word alone.
    let mut recognised = 0;
    for w in &t.words {
        let heard = hear(window(&t, w.start, w.end), t.rate).await;
        let word = normalize(&w.word);
        let ok = word.iter().all(|x| heard.contains(x));
        recognised += usize::from(ok);
        println!(
            "{ok:5}  {:6.3}-{:6.3} {:10} -> {heard:?}",
            w.start, w.end, w.word
        );
    }
    let share = recognised as f64 / t.words.len() as f64;

    // Windows of four words: most of their words, and no longer word from around them.
    let (mut groups, mut group_words, mut group_heard, mut leaks) = (0, 0, 0, 0);
    for (i, group) in t.words.chunks(GROUP).enumerate() {
        let heard = hear(
            window(&t, group[0].start, group[group.len() - 1].end),
            t.rate,
        )
        .await;
        let inside: Vec<String> = group.iter().flat_map(|w| normalize(&w.word)).collect();
        let found = inside.iter().filter(|w| heard.contains(w)).count();
        let before = (i > 0).then(|| &t.words[i * GROUP - 1]);
        let after = t.words.get(i * GROUP + group.len());
        let leaked: Vec<String> = before
            .into_iter()
            .chain(after)
            .flat_map(|w| normalize(&w.word))
            .filter(|w| w.len() >= 4 && !inside.contains(w) && heard.contains(w))
            .collect();
        println!("{inside:?} -> {heard:?}; leaked {leaked:?}");
        groups += 1;
        group_words += inside.len();
        group_heard += found;
        leaks += leaked.len();
        assert!(found > 0, "{inside:?} not heard in their window: {heard:?}");
    }
    println!(
        "words recognised alone in their window: {recognised}/{} ({:.0}%); in windows of four: \
         {group_heard}/{group_words}; neighbours heard in {leaks} of {groups} windows",
        t.words.len(),
        share * 100.0
    );
    assert!(
        group_heard as f64 >= 0.7 * group_words as f64,
        "only {group_heard} of {group_words} words heard in their group's window"
    );
    assert!(
        share >= 0.6,
        "only {recognised} of {} words heard in their windows",
        t.words.len()
    );
    assert!(
        leaks <= 1,
        "{leaks} neighbouring words heard inside windows"
    );
}
