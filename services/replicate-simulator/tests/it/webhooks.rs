//! Completion webhooks: signed with the published secret, retried with the same `webhook-id`,
//! filtered by `webhook_events_filter`, and the knobs that lose, duplicate or mis-sign them.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::{
    eventually,
    receiver::{Behavior, Receiver},
};

use crate::support::{Sim, effect};

/// A receiver that trusts the simulator's published secret on `path`.
async fn receiver_for(sim: &Sim, path: &str) -> Receiver {
    let receiver = Receiver::start().await;
    let (_, secret) = sim.get(&sim.url("/v1/webhooks/default/secret")).await;
    receiver.trust(path, secret["key"].as_str().unwrap());
    receiver
}

fn with_webhook(mut body: Value, url: &str, filter: Option<Value>) -> Value {
    body["webhook"] = json!(url);
    if let Some(filter) = filter {
        body["webhook_events_filter"] = filter;
    }
    body
}

async fn wait_for(
    receiver: &Receiver,
    path: &str,
    count: usize,
) -> Vec<test_support::receiver::Received> {
    eventually(Duration::from_secs(20), "the webhooks", || async {
        let got = receiver.received_on(path);
        (got.len() >= count).then_some(got)
    })
    .await
}

#[tokio::test]
async fn completion_webhook_is_signed_and_carries_the_prediction() {
    let sim = Sim::start(&[]);
    let receiver = receiver_for(&sim, "/hook").await;
    let created = sim
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/hook"),
            Some(json!(["completed"])),
        ))
        .await;
    let got = wait_for(&receiver, "/hook", 1).await;
    let webhook = &got[0];
    assert!(webhook.verified, "{webhook:?}");
    assert!(webhook.id.starts_with("msg_"));
    assert!(webhook.signature.starts_with("v1,"));
    let now = chrono::Utc::now().timestamp();
    assert!((now - webhook.timestamp.parse::<i64>().unwrap()).abs() < 30);
    let body: Value = serde_json::from_str(&webhook.body).unwrap();
    assert_eq!(body["id"], created["id"]);
    assert_eq!(body["status"], "succeeded");
    assert!(body["output"].as_str().unwrap().ends_with(".wav"));
    assert_eq!(body["webhook_events_filter"], json!(["completed"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received_on("/hook").len(), 1, "one webhook only");
}

#[tokio::test]
async fn start_webhooks_only_when_asked() {
    let sim = Sim::start(&[]);
    let receiver = receiver_for(&sim, "/both").await;
    receiver.trust("/start-only", &sim.secret);
    sim.create(with_webhook(
        effect(1.0, json!({})),
        &receiver.url("/both"),
        Some(json!(["start", "completed"])),
    ))
    .await;
    let only_start = sim
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/start-only"),
            Some(json!(["start"])),
        ))
        .await;
    let both = wait_for(&receiver, "/both", 2).await;
    let statuses: Vec<String> = both
        .iter()
        .map(|w| {
            serde_json::from_str::<Value>(&w.body).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["processing", "succeeded"]);
    assert_ne!(both[0].id, both[1].id, "each event is its own message");
    sim.finished(&only_start).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_only = receiver.received_on("/start-only");
    assert_eq!(start_only.len(), 1);
    assert!(start_only[0].body.contains("\"processing\""));
}

#[tokio::test]
async fn a_refused_webhook_is_retried_with_the_same_id() {
    let sim = Sim::start(&[("SIMULATOR_WEBHOOK_ATTEMPTS", "3")]);
    let receiver = receiver_for(&sim, "/down").await;
    receiver.set("/down", Behavior::status(503));
    sim.create(with_webhook(
        effect(1.0, json!({})),
        &receiver.url("/down"),
        None,
    ))
    .await;
    let got = wait_for(&receiver, "/down", 3).await;
    assert!(got.iter().all(|w| w.id == got[0].id && w.verified));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.received_on("/down").len(),
        3,
        "no more than the attempts"
    );
}

#[tokio::test]
async fn a_webhook_retried_after_a_failure_arrives() {
    // The first attempt is refused with a 500; the receiver takes the retry.
    let sim = Sim::start(&[("SIMULATOR_WEBHOOK_RETRY_DELAY", "700ms")]);
    let receiver = receiver_for(&sim, "/late").await;
    receiver.set("/late", Behavior::status(500));
    sim.create(with_webhook(
        effect(1.0, json!({})),
        &receiver.url("/late"),
        None,
    ))
    .await;
    wait_for(&receiver, "/late", 1).await;
    receiver.set("/late", Behavior::status(204));
    let got = wait_for(&receiver, "/late", 2).await;
    assert_eq!(got[0].id, got[1].id);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        receiver.received_on("/late").len(),
        2,
        "accepted: no more attempts"
    );
}

#[tokio::test]
async fn failed_and_canceled_predictions_send_completed_webhooks() {
    let sim = Sim::start(&[("SIMULATOR_FAILURE_RATE", "1")]);
    let receiver = receiver_for(&sim, "/failed").await;
    receiver.trust("/canceled", &sim.secret);
    let failed = sim
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/failed"),
            None,
        ))
        .await;
    let done = sim.finished(&failed).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("SIMULATOR_FAILURE_RATE")
    );
    assert_eq!(done["output"], Value::Null);
    let got = wait_for(&receiver, "/failed", 1).await;
    assert!(got[0].body.contains("\"failed\"") && got[0].verified);

    let slow = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "1h")]);
    let receiver = receiver_for(&slow, "/canceled").await;
    let running = slow
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/canceled"),
            None,
        ))
        .await;
    let cancel = running["urls"]["cancel"].as_str().unwrap();
    slow.post(cancel.strip_prefix(&slow.base).unwrap(), &json!({}))
        .await;
    let got = wait_for(&receiver, "/canceled", 1).await;
    assert!(got[0].body.contains("\"canceled\"") && got[0].verified);
}

#[tokio::test]
async fn duplicate_lost_and_missigned_webhooks() {
    let duplicating = Sim::start(&[("SIMULATOR_DUPLICATE_WEBHOOKS", "true")]);
    let receiver = receiver_for(&duplicating, "/twice").await;
    duplicating
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/twice"),
            None,
        ))
        .await;
    let got = wait_for(&receiver, "/twice", 2).await;
    assert_eq!(got[0].id, got[1].id);
    assert_eq!(got[0].body, got[1].body);
    assert!(got.iter().all(|w| w.verified));

    let losing = Sim::start(&[("SIMULATOR_LOST_WEBHOOK_RATE", "1")]);
    let receiver = receiver_for(&losing, "/lost").await;
    let lost = losing
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/lost"),
            None,
        ))
        .await;
    assert_eq!(losing.finished(&lost).await["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received_on("/lost").is_empty());

    let missigning = Sim::start(&[
        ("SIMULATOR_WRONG_WEBHOOK_SECRET", "true"),
        ("SIMULATOR_WEBHOOK_ATTEMPTS", "1"),
    ]);
    let receiver = receiver_for(&missigning, "/wrong").await;
    missigning
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/wrong"),
            None,
        ))
        .await;
    let got = wait_for(&receiver, "/wrong", 1).await;
    assert!(!got[0].verified, "signed with a secret nobody published");
    assert!(got[0].signature.starts_with("v1,"));
}

/// The chaos run turns misbehaviour on and off while predictions are under way; the simulator
/// reads its knobs afresh at each webhook and download, so a change takes effect at once and
/// nothing it already knows is forgotten.
#[tokio::test]
async fn knobs_changed_while_running_take_effect_at_once() {
    let sim = Sim::start(&[]);
    let receiver = receiver_for(&sim, "/runtime").await;
    let create = || {
        sim.create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/runtime"),
            None,
        ))
    };

    sim.knobs.update(|k| {
        k.lost_webhook_rate = replicate_simulator::settings::Rate::of(1.0);
    });
    let lost = create().await;
    assert_eq!(sim.finished(&lost).await["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received_on("/runtime").is_empty());

    sim.knobs.update(|k| {
        k.lost_webhook_rate = replicate_simulator::settings::Rate::NEVER;
        k.duplicate_webhooks = true;
        k.download_failures = 1;
    });
    let twice = create().await;
    let got = wait_for(&receiver, "/runtime", 2).await;
    assert_eq!(got.len(), 2, "the lost one stays lost");
    assert_eq!(got[0].id, got[1].id, "a duplicate keeps its webhook-id");
    assert!(got.iter().all(|w| w.verified));
    let url = sim.finished(&twice).await["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sim.client.get(&url).send().await.unwrap().status(), 500);
    assert_eq!(sim.client.get(&url).send().await.unwrap().status(), 200);

    sim.knobs.update(|k| {
        k.duplicate_webhooks = false;
        k.download_failures = 0;
        k.webhook_attempts = 0;
    });
    assert_eq!(sim.knobs.get().webhook_attempts, 1, "kept within 1 to 10");
    let once = create().await;
    sim.finished(&once).await;
    let got = wait_for(&receiver, "/runtime", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received_on("/runtime").len(), 3, "{got:?}");
    let url = sim.finished(&once).await["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sim.client.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn metrics_count_predictions_webhooks_and_downloads() {
    let sim = Sim::start(&[("SIMULATOR_WEBHOOK_ATTEMPTS", "2")]);
    let receiver = receiver_for(&sim, "/counted").await;
    receiver.set("/counted", Behavior::status(500));
    let done = sim
        .create(with_webhook(
            effect(1.0, json!({})),
            &receiver.url("/counted"),
            None,
        ))
        .await;
    let done = sim.finished(&done).await;
    sim.client
        .get(done["output"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    wait_for(&receiver, "/counted", 2).await;
    let metrics = eventually(Duration::from_secs(10), "the metrics", || async {
        let text = sim
            .client
            .get(sim.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains(r#"simulator_webhook_attempts_total{outcome="gave_up"} 1"#)
            .then_some(text)
    })
    .await;
    for line in [
        "simulator_predictions_created_total 1",
        r#"simulator_predictions_finished_total{status="succeeded"} 1"#,
        r#"simulator_webhook_attempts_total{outcome="refused"} 2"#,
        r#"simulator_downloads_total{outcome="served"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_hundred_concurrent_predictions_all_finish_with_their_webhooks() {
    // The audio-generation benchmark runs 100 jobs against a 1-second generation; the simulator
    // must not be what makes it slow.
    let sim = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "1s")]);
    let receiver = receiver_for(&sim, "/many").await;
    let started = std::time::Instant::now();
    let creations = (0..100).map(|_| {
        sim.create(with_webhook(
            effect(2.0, json!({"output_format": "mp3"})),
            &receiver.url("/many"),
            None,
        ))
    });
    futures::future::join_all(creations).await;
    let got = wait_for(&receiver, "/many", 100).await;
    let elapsed = started.elapsed();
    assert!(got.iter().all(|w| w.verified));
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[tokio::test]
async fn the_legacy_webhook_completed_field_still_works() {
    let sim = Sim::start(&[]);
    let receiver = receiver_for(&sim, "/legacy").await;
    let mut body = effect(1.0, json!({}));
    body["webhook_completed"] = json!(receiver.url("/legacy"));
    let created = sim.create(body).await;
    let got = wait_for(&receiver, "/legacy", 1).await;
    assert!(got[0].verified);
    assert!(got[0].body.contains(created["id"].as_str().unwrap()));
}
