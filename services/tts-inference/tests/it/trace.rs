//! One request is one trace across services: a request to the gateway (in this process) that
//! calls tts-inference (a real separate process, the service binary) over gRPC yields spans of
//! both services, exported over OTLP, with one trace id and the gRPC span parented to the
//! gateway's.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use test_stack::{Service, Stack};
use test_support::{
    TestDatabase, internal_keys,
    otlp::{OtlpReceiver, id_bytes},
};

/// Reads the service's JSON log lines until the one announcing its ports.
fn grpc_port_from_logs(stdout: impl std::io::Read) -> u16 {
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(port) = event["grpc_port"].as_u64()
        {
            return u16::try_from(port).unwrap();
        }
    }
    panic!("the service exited without announcing its port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_request_and_its_grpc_call_share_one_trace() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let guard = telemetry::init(&telemetry::TelemetryConfig {
        service_name: "gateway".to_owned(),
        log_filter: "info".to_owned(),
        json_logs: false,
        otlp_endpoint: Some(receiver.endpoint().to_owned()),
        environment: "development".to_owned(),
        logs_to_stderr: false,
    })
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_tts-inference"))
        .env_clear()
        .envs([
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("VOICES_DIR", test_support::voices_dir().to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("INTERNAL_AUTH_TRUSTED_KEYS", internal_keys().trusted()),
            ("LOG_FORMAT", "json"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let tts_port = tokio::task::spawn_blocking(move || grpc_port_from_logs(stdout))
        .await
        .unwrap();

    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_gateway()
        .setting(
            Service::Gateway,
            "TTS_INFERENCE_URL",
            format!("http://127.0.0.1:{tts_port}"),
        )
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &[internal_rpc::Scope::Tts]).await;

    // The caller starts the trace: its traceparent must be adopted by the gateway.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = test_support::http_client()
        .get(format!("{base}/v1/voices"))
        .header("x-api-key", &key)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // SIGTERM: the service drains, flushes its spans and exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "tts-inference exits 0 after SIGTERM");

    stack.stop().await;
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap();

    let trace = id_bytes(trace_id);
    let spans = test_support::eventually(
        Duration::from_secs(10),
        "spans of both services",
        || async {
            let spans: Vec<_> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            let both = spans.iter().any(|s| s.service == "gateway")
                && spans.iter().any(|s| s.service == "tts-inference");
            both.then_some(spans)
        },
    )
    .await;

    let http = spans
        .iter()
        .find(|s| s.service == "gateway" && s.name == "GET /v1/voices")
        .unwrap_or_else(|| panic!("no gateway HTTP span in {spans:#?}"));
    assert_eq!(
        http.parent_span_id,
        id_bytes("00f067aa0ba902b7"),
        "parented to the caller's span"
    );
    let grpc = spans
        .iter()
        .find(|s| s.service == "tts-inference" && s.name == "sonora.tts.v1.TtsInference/ListVoices")
        .unwrap_or_else(|| panic!("no tts-inference gRPC span in {spans:#?}"));
    let gateway_span_ids: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "gateway")
        .map(|s| s.span_id.clone())
        .collect();
    assert!(
        gateway_span_ids.contains(&grpc.parent_span_id),
        "the gRPC server span's parent is a gateway span: {spans:#?}"
    );
}
