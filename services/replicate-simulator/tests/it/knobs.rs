//! The knobs that make the simulator misbehave on purpose: broken and slow downloads, file
//! retention, the creation rate limit, and an unreachable webhook receiver.

use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{eventually, proxy::TcpProxy, receiver::Receiver};

use crate::support::{Sim, effect};

#[tokio::test]
async fn downloads_fail_as_often_as_told_then_succeed() {
    let sim = Sim::start(&[("SIMULATOR_DOWNLOAD_FAILURES", "2")]);
    let done = sim
        .finished(&sim.create(effect(1.0, json!({}))).await)
        .await;
    let url = done["output"].as_str().unwrap();
    for _ in 0..2 {
        let response = sim.client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["detail"].is_string());
    }
    let response = sim.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap().starts_with(b"RIFF"));
}

#[tokio::test]
async fn slow_downloads_take_their_time() {
    let sim = Sim::start(&[("SIMULATOR_DOWNLOAD_DELAY", "700ms")]);
    let done = sim
        .finished(&sim.create(effect(1.0, json!({}))).await)
        .await;
    let started = Instant::now();
    let response = sim
        .client
        .get(done["output"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn files_are_removed_after_the_retention_period() {
    let sim = Sim::start(&[("SIMULATOR_FILE_RETENTION", "500ms")]);
    let done = sim
        .finished(&sim.create(effect(1.0, json!({}))).await)
        .await;
    assert_eq!(done["data_removed"], false);
    let url = done["output"].as_str().unwrap().to_owned();
    let get = done["urls"]["get"].as_str().unwrap().to_owned();
    let removed = eventually(
        Duration::from_secs(10),
        "the data to be removed",
        || async {
            let (_, p) = sim.get(&get).await;
            (p["data_removed"] == true).then_some(p)
        },
    )
    .await;
    assert_eq!(removed["output"], serde_json::Value::Null);
    assert_eq!(removed["status"], "succeeded");
    let response = sim.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn creations_past_the_rate_are_429_with_retry_after() {
    let sim = Sim::start(&[("SIMULATOR_CREATE_RATE_LIMIT", "2")]);
    for _ in 0..2 {
        sim.create(effect(1.0, json!({}))).await;
    }
    let (status, body, headers) = sim.post("/v1/predictions", &effect(1.0, json!({}))).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("throttled"));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Reading is not creating: the limit is on creations only.
    let (status, _) = sim.get(&sim.url("/v1/predictions")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_webhook_is_retried_after_a_connection_error() {
    let sim = Sim::start(&[("SIMULATOR_WEBHOOK_RETRY_DELAY", "500ms")]);
    let receiver = Receiver::start().await;
    receiver.trust("/flaky", &sim.secret);
    let proxy = TcpProxy::start(test_support::host_port(&receiver.base))
        .await
        .unwrap();
    proxy.cut();
    let mut body = effect(1.0, json!({}));
    body["webhook"] = json!(format!("http://127.0.0.1:{}/flaky", proxy.port()));
    let done = sim.finished(&sim.create(body).await).await;
    assert_eq!(done["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(receiver.received_on("/flaky").is_empty());
    proxy.restore();
    let got = eventually(Duration::from_secs(10), "the retried webhook", || async {
        let got = receiver.received_on("/flaky");
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert!(got[0].verified);
    assert!(got[0].body.contains(done["id"].as_str().unwrap()));
}

#[tokio::test]
async fn files_past_the_size_bound_are_removed_oldest_first() {
    // A one-second effect at 44.1 kHz is about 88 KB as wav: two fit under 200 KB, three do not.
    let sim = Sim::start(&[("SIMULATOR_MAX_STORED_BYTES", "200000")]);
    let mut done = Vec::new();
    for _ in 0..3 {
        done.push(
            sim.finished(&sim.create(effect(1.0, json!({}))).await)
                .await,
        );
    }
    let (_, oldest) = sim.get(done[0]["urls"]["get"].as_str().unwrap()).await;
    assert_eq!(oldest["data_removed"], true);
    assert_eq!(oldest["output"], serde_json::Value::Null);
    for kept in &done[1..] {
        let response = sim
            .client
            .get(kept["output"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn a_cut_download_ends_before_its_announced_length() {
    let sim = Sim::start(&[
        ("SIMULATOR_DOWNLOAD_FAILURES", "1"),
        ("SIMULATOR_DOWNLOAD_FAILURE_MODE", "cut"),
    ]);
    let done = sim
        .finished(&sim.create(effect(1.0, json!({}))).await)
        .await;
    let url = done["output"].as_str().unwrap();
    let response = sim.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.content_length().unwrap() > 0);
    assert!(response.bytes().await.is_err(), "the body is cut short");
    let whole = sim.client.get(url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let expected = whole.content_length().unwrap();
    assert_eq!(whole.bytes().await.unwrap().len() as u64, expected);
}

#[tokio::test]
async fn canceled_predictions_lose_their_data_too() {
    let sim = Sim::start(&[
        ("SIMULATOR_GENERATION_DELAY", "1h"),
        ("SIMULATOR_FILE_RETENTION", "300ms"),
    ]);
    let running = sim.create(effect(1.0, json!({}))).await;
    let cancel = running["urls"]["cancel"].as_str().unwrap();
    sim.post(cancel.strip_prefix(&sim.base).unwrap(), &json!({}))
        .await;
    let get = running["urls"]["get"].as_str().unwrap().to_owned();
    let removed = eventually(
        Duration::from_secs(10),
        "the data to be removed",
        || async {
            let (_, p) = sim.get(&get).await;
            (p["data_removed"] == true).then_some(p)
        },
    )
    .await;
    assert_eq!(removed["status"], "canceled");
    assert_eq!(removed["input"], json!({}));
}
