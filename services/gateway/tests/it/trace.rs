//! One trace across the system: a client's call to create a sound effect, audio-generation's
//! submission to the (simulated) Replicate, the signed webhook through webhook-ingest's inbox,
//! the job's completion and finishing, and the delivery to the partner are one trace, exported
//! over OTLP to a receiver in this process. Queued work carries the trace with it (the job row,
//! the inbox event, the outbox event, the delivery's message), and the partner receives it in
//! the `traceparent` header.
//!
//! The services run in this process (one exporter, one `service.name`); spans are told apart by
//! name. `tts-inference`'s trace test shows the same propagation between separate processes.

use std::{collections::HashMap, time::Duration};

use internal_rpc::Scope;
use test_stack::{Service, Simulator};
use test_support::{
    TestDatabase, eventually,
    otlp::{OtlpReceiver, ReceivedSpan, id_bytes},
    receiver::Receiver,
};

/// The caller's trace and span: the gateway must continue them.
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

async fn call(
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: serde_json::Value,
    traceparent: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = test_support::http_client()
        .request(method, url)
        .header("x-api-key", key)
        .json(&body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The names of `span`'s ancestors within `spans`, nearest first, and the parent id the chain
/// ends on (a span not in `spans`).
fn ancestry(span: &ReceivedSpan, spans: &[ReceivedSpan]) -> (Vec<String>, Vec<u8>) {
    let by_id: HashMap<&[u8], &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let mut names = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(next) = by_id.get(parent.as_slice()) {
        names.push(next.name.clone());
        parent = next.parent_span_id.clone();
        assert!(names.len() < 200, "a cycle in the parents: {names:?}");
    }
    (names, parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_effect_is_one_trace_from_the_api_call_to_the_partner() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let guard = telemetry::init(&telemetry::TelemetryConfig {
        service_name: "sonora".to_owned(),
        log_filter: "info".to_owned(),
        json_logs: false,
        otlp_endpoint: Some(otlp.endpoint().to_owned()),
        environment: "development".to_owned(),
        logs_to_stderr: false,
    })
    .unwrap();

    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_GENERATION_DELAY", "100ms")]);
    let stack = crate::audio_stack(&db, &sim).start().await;
    let base = stack.http_url(Service::Gateway);
    let key = stack
        .api_key("acme", &[Scope::Audio, Scope::Webhooks])
        .await;
    let post = reqwest::Method::POST;

    let partner = Receiver::start().await;
    let (status, endpoint) = call(
        post.clone(),
        &format!("{base}/v1/webhook-endpoints"),
        &key,
        serde_json::json!({"url": partner.url("/sonora"),
                           "event_types": ["audio.sound_effect.completed"]}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let secret = test_support::http_client()
        .get(format!(
            "{base}/v1/webhook-endpoints/{}/secret",
            endpoint["id"].as_str().unwrap()
        ))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    partner.trust("/sonora", secret["key"].as_str().unwrap());

    let (status, job) = call(
        post,
        &format!("{base}/v1/sound-effects"),
        &key,
        serde_json::json!({"prompt": "a door creaks", "duration_seconds": 1.5}),
        Some(&format!("00-{TRACE}-{CALLER_SPAN}-01")),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();

    // The partner's copy carries the trace: the partner can join it too.
    let delivered = eventually(
        Duration::from_secs(60),
        "the job's event at the partner",
        || async {
            partner
                .received_on("/sonora")
                .into_iter()
                .find(|r| r.body.contains(&job_id))
        },
    )
    .await;
    assert!(delivered.verified, "signed with the endpoint's secret");
    let traceparent = delivered
        .traceparent
        .unwrap_or_else(|| panic!("the delivery carries no traceparent"));
    assert!(
        traceparent.starts_with(&format!("00-{TRACE}-")),
        "the delivery continues the caller's trace: {traceparent}"
    );

    stack.stop().await;
    drop(sim);
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap();

    // Every step, in the caller's trace.
    let steps = [
        "POST /v1/sound-effects",
        "sonora.audio.v1.AudioGeneration/CreateSoundEffect",
        "job.submit",
        "replicate.webhook.store",
        "inbox.dispatch",
        "sonora.audio.v1.AudioGeneration/CompletePrediction",
        "job.finish",
        "webhook.deliver",
    ];
    let trace = id_bytes(TRACE);
    let spans = eventually(
        Duration::from_secs(15),
        "every step's span in the caller's trace",
        || async {
            let spans: Vec<ReceivedSpan> = otlp
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            steps
                .iter()
                .all(|step| spans.iter().any(|s| s.name == *step))
                .then_some(spans)
        },
    )
    .await;
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };

    // One tree: every span of the trace descends from the gateway's request span, which is the
    // caller's child.
    let root = named("POST /v1/sound-effects");
    assert_eq!(
        root.parent_span_id,
        id_bytes(CALLER_SPAN),
        "the caller's child"
    );
    for span in &spans {
        if span.span_id == root.span_id {
            continue;
        }
        let (ancestors, top) = ancestry(span, &spans);
        assert!(
            ancestors.last().map(String::as_str) == Some("POST /v1/sound-effects")
                && top == id_bytes(CALLER_SPAN),
            "{} does not descend from the API call: {ancestors:?}",
            span.name
        );
    }

    // The delivery descends from the finishing, which descends from the webhook's completion,
    // its dispatch, its storing in the job's trace, and the job's creation: linked through the
    // job and the webhook, in that order.
    let (ancestors, _) = ancestry(named("webhook.deliver"), &spans);
    let chain: Vec<&str> = ancestors
        .iter()
        .map(String::as_str)
        .filter(|name| steps.contains(name))
        .collect();
    assert_eq!(
        chain,
        [
            "job.finish",
            "sonora.audio.v1.AudioGeneration/CompletePrediction",
            "inbox.dispatch",
            "replicate.webhook.store",
            "sonora.audio.v1.AudioGeneration/CreateSoundEffect",
            "POST /v1/sound-effects",
        ],
        "the delivery's ancestry: {ancestors:?}"
    );
    let (ancestors, _) = ancestry(named("job.submit"), &spans);
    assert!(
        ancestors
            .iter()
            .any(|a| a == "sonora.audio.v1.AudioGeneration/CreateSoundEffect"),
        "the submission continues the creation: {ancestors:?}"
    );

    // The webhook's own request (Replicate starts no trace of ours) is linked from the span
    // that stored it in the job's trace, so an operator can go from one to the other.
    let store = named("replicate.webhook.store");
    let all = otlp.spans();
    let linked_traces: Vec<&Vec<u8>> = store.links.iter().map(|(trace_id, _)| trace_id).collect();
    assert!(
        all.iter().any(|s| linked_traces.contains(&&s.trace_id)
            && s.trace_id != trace
            && s.name.starts_with("POST /api/replicate-webhook/")),
        "the store span links the webhook request's trace: {:?}",
        store.links
    );
    assert!(
        store.links.iter().all(|(trace_id, span_id)| all
            .iter()
            .any(|s| &s.trace_id == trace_id && &s.span_id == span_id)),
        "each link names a span that was exported"
    );
}
