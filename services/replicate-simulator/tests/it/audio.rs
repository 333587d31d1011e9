//! The output files: real audio of the requested length, decoded back with the `ffmpeg` program.

use std::process::Command;

use serde_json::json;

use crate::support::{Sim, effect};

/// Decodes `bytes` with ffmpeg and returns the duration in seconds, from the samples decoded.
fn decoded_seconds(bytes: &[u8], ext: &str) -> f64 {
    let dir = std::env::temp_dir().join(format!("sim-audio-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("out.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg runs");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.len() as f64 / 2.0 / 48_000.0
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn download(sim: &Sim, url: &str) -> (String, Vec<u8>) {
    let response = sim.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn sound_effects_and_music_decode_to_the_requested_length() {
    let sim = Sim::start(&[]);
    let cases = [
        (effect(2.5, json!({})), 2.5, "wav", "audio/wav"),
        (
            effect(1.2, json!({"output_format": "mp3"})),
            1.2,
            "mp3",
            "audio/mpeg",
        ),
        (
            json!({
                "version": "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85",
                "input": {"prompt": "calm piano", "duration": 3, "output_format": "mp3"},
            }),
            3.0,
            "mp3",
            "audio/mpeg",
        ),
        (
            json!({
                "version": "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85",
                "input": {"prompt": "calm piano", "duration": 4},
            }),
            4.0,
            "wav",
            "audio/wav",
        ),
    ];
    for (body, seconds, ext, content_type) in cases {
        let prediction = sim.finished(&sim.create(body).await).await;
        assert_eq!(prediction["status"], "succeeded", "{prediction}");
        let url = prediction["output"].as_str().unwrap();
        assert!(
            url.starts_with(&sim.base) && url.ends_with(&format!(".{ext}")),
            "{url}"
        );
        let (got_type, bytes) = download(&sim, url).await;
        assert_eq!(got_type, content_type);
        let decoded = decoded_seconds(&bytes, ext);
        assert!(
            (decoded - seconds).abs() <= 0.05,
            "{ext}: asked for {seconds} s, decoded {decoded} s"
        );
    }
}

#[tokio::test]
async fn music_is_not_noise() {
    // Music and effects come from different synthesisers: the same length gives different files.
    let sim = Sim::start(&[]);
    let music = sim
        .finished(
            &sim.create(json!({
                "version": "meta/musicgen",
                "input": {"duration": 1},
            }))
            .await,
        )
        .await;
    let noise = sim
        .finished(&sim.create(effect(1.0, json!({}))).await)
        .await;
    let (_, music) = download(&sim, music["output"].as_str().unwrap()).await;
    let (_, noise) = download(&sim, noise["output"].as_str().unwrap()).await;
    assert_ne!(music, noise);
}
