//! Integration tests of `tts-inference`: the real service on port 0.

mod hostile;
mod intelligibility;
mod ssml;
mod synthesis;
mod timestamps;
mod trace;

use std::time::Duration;

use lifecycle::Signals;
use sonora_proto::tts::v1::{ListVoicesRequest, tts_inference_client::TtsInferenceClient};
use test_support::{eventually, get_json, grpc_health, sources};
use tonic_health::pb::health_check_response::ServingStatus;
use tts_inference::{Application, Settings};

struct Running {
    app_grpc: u16,
    app_http: u16,
    signals: Signals,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(voices_dir: &std::path::Path) -> Running {
    let settings =
        Settings::load(&sources([("VOICES_DIR", voices_dir.display().to_string())])).unwrap();
    let signals = Signals::new();
    let app = Application::build(settings, signals.clone()).unwrap();
    let (app_grpc, app_http) = (app.grpc_port(), app.http_port());
    let task = tokio::spawn(app.stopped());
    Running {
        app_grpc,
        app_http,
        signals,
        task,
    }
}

#[tokio::test]
async fn ready_and_serving_with_the_default_voice() {
    let svc = start(&test_support::voices_dir());
    let base = format!("http://127.0.0.1:{}", svc.app_http);

    let (status, body) = get_json(&format!("{base}/health")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(body["status"].as_str(), Some("healthy" | "degraded")),
        "{body}"
    );

    let (status, body) = get_json(&format!("{base}/ready")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"]["voice"]["status"], "up");

    let metrics = test_support::http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("# TYPE http_requests_total counter"),
        "{text}"
    );

    eventually(Duration::from_secs(10), "gRPC health SERVING", || {
        grpc_health(svc.app_grpc)
    })
    .await
    .eq(&ServingStatus::Serving)
    .then_some(())
    .expect("serving");
    svc.signals.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn not_ready_without_the_default_voice_and_ready_once_installed() {
    let dir = tempdir();
    let svc = start(&dir);
    let base = format!("http://127.0.0.1:{}", svc.app_http);

    let (status, body) = get_json(&format!("{base}/ready")).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["components"]["voice"]["status"], "down");
    assert!(
        body["components"]["voice"]["error"]
            .as_str()
            .unwrap()
            .contains("en_US-joe-medium")
    );
    let health = eventually(Duration::from_secs(10), "gRPC health", || {
        grpc_health(svc.app_grpc)
    })
    .await;
    assert_eq!(health, ServingStatus::NotServing);

    // Installing the voice while the service runs makes it ready, without a restart.
    for ext in ["onnx", "onnx.json"] {
        let name = format!("en_US-joe-medium.{ext}");
        std::fs::copy(test_support::voices_dir().join(&name), dir.join(&name)).unwrap();
    }
    let (status, _) = get_json(&format!("{base}/ready")).await.unwrap();
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), "gRPC health SERVING", || async {
        (grpc_health(svc.app_grpc).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    svc.signals.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn lists_installed_voices_with_their_speakers() {
    let dir = tempdir();
    for ext in ["onnx", "onnx.json"] {
        let name = format!("en_US-joe-medium.{ext}");
        std::fs::copy(test_support::voices_dir().join(&name), dir.join(&name)).unwrap();
    }
    // A multi-speaker voice dropped into the folder appears too (its weights are not read here).
    std::fs::write(dir.join("en_GB-vctk-medium.onnx"), b"weights").unwrap();
    std::fs::write(
        dir.join("en_GB-vctk-medium.onnx.json"),
        r#"{"audio":{"sample_rate":22050,"quality":"medium"},"language":{"code":"en_GB"},
           "dataset":"vctk","num_speakers":2,"speaker_id_map":{"p225":0,"p226":1}}"#,
    )
    .unwrap();
    // A configuration without weights is not a voice.
    std::fs::write(
        dir.join("xx-orphan.onnx.json"),
        r#"{"audio":{"sample_rate":16000}}"#,
    )
    .unwrap();

    let svc = start(&dir);
    let peer = test_support::internal_keys().peer("gateway", "tts-inference", svc.app_grpc);
    let mut client = TtsInferenceClient::new(peer.channel());
    let voices = client
        .list_voices(ListVoicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .voices;
    let ids: Vec<_> = voices.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["en_GB-vctk-medium", "en_US-joe-medium"]);

    let joe = &voices[1];
    assert_eq!(
        (
            joe.name.as_str(),
            joe.language.as_str(),
            joe.sample_rate,
            joe.quality.as_str(),
            joe.is_default
        ),
        ("joe", "en_US", 22050, "medium", true)
    );
    assert!(joe.speakers.is_empty());
    let vctk = &voices[0];
    assert!(!vctk.is_default);
    let speakers: Vec<_> = vctk
        .speakers
        .iter()
        .map(|s| (s.id, s.name.as_str()))
        .collect();
    assert_eq!(speakers, [(0, "p225"), (1, "p226")]);
    svc.signals.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn stops_accepting_after_shutdown() {
    let svc = start(&test_support::voices_dir());
    let health = format!("http://127.0.0.1:{}/health", svc.app_http);
    assert_eq!(get_json(&health).await.unwrap().0, 200);
    svc.signals.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), svc.task)
        .await
        .expect("drains within the grace period")
        .unwrap()
        .unwrap();
    assert!(
        get_json(&health).await.is_err(),
        "HTTP still accepting after shutdown"
    );
    assert!(
        grpc_health(svc.app_grpc).await.is_none(),
        "gRPC still accepting after shutdown"
    );
}

#[test]
fn bad_setting_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_tts-inference"),
        &[],
        &[("GRPC_ADDR", "not-an-address")],
    );
    let (code, stderr) = (run.code, run.stderr);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("GRPC_ADDR"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tts-it-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn only_signed_calls_from_the_gateway_are_served() {
    let svc = start(&test_support::voices_dir());
    let anonymous =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", svc.app_grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let status = TtsInferenceClient::new(anonymous)
        .list_voices(ListVoicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // Health stays open to probes that carry no token.
    eventually(Duration::from_secs(10), "SERVING", || async {
        (grpc_health(svc.app_grpc).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    // A genuine service that has no business here is refused.
    let ingest =
        test_support::internal_keys().peer("webhook-ingest", "tts-inference", svc.app_grpc);
    let status = TtsInferenceClient::new(ingest.channel())
        .list_voices(ListVoicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    svc.signals.shutdown.cancel();
}
