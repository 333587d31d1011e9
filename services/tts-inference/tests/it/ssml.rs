//! SSML over `Synthesize`: a break adds its silence, a `sub` is spoken as its alias and no tag
//! is ever read aloud (Whisper tiny.en listens), invalid SSML is refused saying where, and breaks
//! cannot make unbounded audio.

#![allow(
    clippy::print_stdout,
    reason = "the transcript is the evidence, printed with --no-capture"
)]

use listener::{Listener, default_model_dir, ensure_model};
use sonora_proto::tts::v1::{AudioFormat, SynthesizeRequest, TextType};

use crate::synthesis::{Service, start};

/// Seconds of audio, the words and the PCM of a deterministic synthesis of `text`.
async fn speak(
    svc: &mut Service,
    text: &str,
) -> Result<(f64, Vec<String>, Vec<f32>, u32), tonic::Status> {
    let mut stream = svc
        .client
        .synthesize(SynthesizeRequest {
            text: text.to_owned(),
            format: AudioFormat::Pcm16.into(),
            noise_scale: Some(0.0),
            noise_w: Some(0.0),
            timestamps: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut seconds, mut words, mut pcm, mut rate) = (0.0, Vec::new(), Vec::new(), 0);
    while let Some(message) = stream.message().await? {
        pcm.extend(message.audio);
        rate = message.sample_rate;
        words.extend(message.words.into_iter().map(|w| w.word));
        if message.done {
            seconds = message.audio_seconds;
        }
    }
    let samples = pcm
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    Ok((seconds, words, samples, rate))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssml_breaks_subs_and_refusals() {
    let mut svc = start(&[]).await;

    // A one-second break adds one second, and the words around it are the same.
    let (plain, plain_words, _, _) = speak(&mut svc, "<speak>Hello there. How are you?</speak>")
        .await
        .unwrap();
    let (broken, broken_words, _, _) = speak(
        &mut svc,
        "<speak>Hello there.<break time=\"1s\"/>How are you?</speak>",
    )
    .await
    .unwrap();
    println!("without the break {plain:.3} s, with it {broken:.3} s");
    assert!(
        (broken - plain - 1.0).abs() < 0.02,
        "{broken} s with the break, {plain} s without"
    );
    assert_eq!(plain_words, ["Hello", "there", "How", "are", "you"]);
    assert_eq!(broken_words, plain_words);

    // A sub is spoken as its alias, and the markup is never read aloud.
    let dir = default_model_dir();
    let mut listener = tokio::task::spawn_blocking(move || {
        ensure_model(&dir).expect("the Whisper model is fetched");
        Listener::load(&dir).expect("the Whisper model loads")
    })
    .await
    .unwrap();
    let (_, words, samples, rate) = speak(
        &mut svc,
        "<speak>Hello <sub alias=\"World Health Organization\">WHO</sub></speak>",
    )
    .await
    .unwrap();
    assert_eq!(words, ["Hello", "World", "Health", "Organization"]);
    let heard = tokio::task::spawn_blocking(move || listener.transcribe(&samples, rate).unwrap())
        .await
        .unwrap();
    println!("<sub>: {heard:?}");
    let heard = listener::normalize(&heard).join(" ");
    assert!(heard.contains("world health organization"), "{heard}");
    assert!(
        !heard.contains("speak") && !heard.contains("sub"),
        "{heard}"
    );

    // Invalid SSML names where and what; plain text asked for is never parsed.
    let status = speak(&mut svc, "<speak>Hello <emphasis>there</emphasis></speak>")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("line 1, column 14 (<emphasis>)"),
        "{status:?}"
    );
    let status = speak(&mut svc, "<speak>Hello <break time=\"1s\"></speak>")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("(<break>)"), "{status:?}");
    let status = svc
        .client
        .synthesize(SynthesizeRequest {
            text: "Hello".into(),
            text_type: TextType::Ssml.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("text must be inside <speak>"),
        "{status:?}"
    );

    // Breaks alone are nothing to speak; breaks beyond the audio limit are refused before any
    // work, and a long break within a request's limit is refused when it would pass it.
    let status = speak(&mut svc, "<speak><break time=\"2s\"/></speak>")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("nothing speakable"), "{status:?}");
    let many = format!("<speak>Hi.{}</speak>", "<break time=\"10s\"/>".repeat(61));
    let status = speak(&mut svc, &many).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("TTS_MAX_AUDIO_SECONDS"),
        "{status:?}"
    );
    let mut small = start(&[("TTS_MAX_AUDIO_SECONDS", "5")]).await;
    let status = speak(
        &mut small,
        "<speak>Hello.<break time=\"4s\"/>And then more words after it.</speak>",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("TTS_MAX_AUDIO_SECONDS"),
        "{status:?}"
    );
}
