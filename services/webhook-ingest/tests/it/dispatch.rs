//! The dispatcher: stored events' actions run with retries on the schedule, dead letters with
//! the last error, every attempt recorded, claims that survive a dead process, and old events
//! cleaned up.

use std::time::Duration;

use test_stack::{Service, Stack};
use test_support::{TestDatabase, eventually, get_json, http_client, proxy::TcpProxy};
use webhook_signature::{SigningKey, signature_header};

use crate::sql;

fn prediction(id: &str) -> String {
    serde_json::json!({
        "id": id,
        "version": "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85",
        "status": "succeeded",
        "input": { "prompt": "rain on a tin roof", "duration": 8 },
        "output": "https://replicate.delivery/pbxt/abc/out.mp3",
        "created_at": "2026-12-02T10:00:00.000000Z",
        "completed_at": "2026-12-02T10:00:05.000000Z"
    })
    .to_string()
}

/// POSTs a Replicate webhook signed with `secret`.
async fn post_replicate(base: &str, path: &str, id: &str, body: &str, secret: &str) -> u16 {
    let now = chrono::Utc::now().timestamp();
    let key = SigningKey::parse(secret).unwrap();
    http_client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            signature_header(&[key], id, now, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A job id no other test uses: the monitor's counts per path live in the shared Redis.
fn unique_job() -> String {
    format!("job_{}", uuid::Uuid::new_v4().simple())
}

async fn metrics(ops: &str) -> String {
    http_client()
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failing_completion_is_retried_on_the_schedule_then_dead_lettered() {
    let db = TestDatabase::create().await.unwrap();
    let secret = SigningKey::generate_hmac();
    // audio-generation is not started: every CompletePrediction fails (UNAVAILABLE).
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REPLICATE_WEBHOOK_SECRET",
            secret.clone(),
        )
        .setting(
            Service::WebhookIngest,
            "INBOX_RETRY_SCHEDULE",
            "200ms,400ms",
        )
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .start()
        .await;
    let (base, ops) = (
        stack.http_url(Service::WebhookIngest),
        stack.ops_url(Service::WebhookIngest),
    );
    test_support::wait_ready(&ops, 200).await;
    let path = format!("/api/replicate-webhook/sound_effect/{}", unique_job());
    assert_eq!(
        post_replicate(&base, &path, "msg_1", &prediction("p1"), &secret).await,
        200
    );

    let error = eventually(Duration::from_secs(20), "the dead letter", || async {
        let rows = sql(&db, "select state, attempts, last_error from ingest.inbox");
        let row = rows.first()?.clone();
        row.starts_with("dead_letter|").then_some(row)
    })
    .await;
    assert!(
        error.starts_with(
            "dead_letter|3|audio-generation did not complete the prediction (Unavailable)"
        ),
        "{error}"
    );
    assert!(error.ends_with("(gave up after 3 attempts)"), "{error}");
    // Every attempt is recorded, in order, with what went wrong and how long it took.
    let attempts = sql(
        &db,
        "select attempt, action, outcome, error like 'audio-generation did not complete%', duration_ms >= 0 \
         from ingest.inbox_attempts order by id",
    );
    assert_eq!(
        attempts,
        [
            "1|complete_prediction|failed|t|t",
            "2|complete_prediction|failed|t|t",
            "3|complete_prediction|failed|t|t"
        ]
    );
    // The backoff was waited for: the attempts are at least the schedule's delays apart (less
    // the jitter of 20%).
    let gaps = sql(
        &db,
        "select extract(epoch from at - lag(at) over (order by id)) * 1000 from ingest.inbox_attempts order by id offset 1",
    );
    let gaps: Vec<f64> = gaps.iter().map(|g| g.parse().unwrap()).collect();
    assert!(gaps[0] >= 160.0 && gaps[1] >= 320.0, "{gaps:?}");

    // The failed actions count for the path in the monitor, and in the metrics.
    let status = eventually(Duration::from_secs(10), "the failures counted", || async {
        let (_, body) = get_json(&format!("{base}/webhook-status")).await.ok()?;
        (body["paths"][&path]["failures_last_hour"] == 3).then_some(body)
    })
    .await;
    assert_eq!(status["paths"][&path]["status"], "ok", "{status}");
    let text = metrics(&ops).await;
    assert!(
        text.contains(r#"webhook_dispatch_total{action="complete_prediction",outcome="failed",source="replicate"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn an_event_accepted_while_audio_generation_is_down_reaches_it_once_it_is_back() {
    use internal_rpc::{Principal, Scopes, on_behalf};
    use sonora_proto::audio::v1::{
        CreateSoundEffectRequest, audio_generation_client::AudioGenerationClient,
    };
    let db = TestDatabase::create().await.unwrap();
    let secret = SigningKey::generate_hmac();
    let audio = Stack::new(&db).with_audio().start().await;
    test_support::wait_ready(&audio.http_url(Service::AudioGeneration), 200).await;
    let proxy = TcpProxy::start(format!(
        "127.0.0.1:{}",
        audio.grpc_port(Service::AudioGeneration)
    ))
    .await
    .unwrap();
    let ingest = Stack::new(&db)
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REPLICATE_WEBHOOK_SECRET",
            secret.clone(),
        )
        .setting(
            Service::WebhookIngest,
            "AUDIO_GENERATION_URL",
            format!("http://127.0.0.1:{}", proxy.port()),
        )
        .setting(
            Service::WebhookIngest,
            "INBOX_RETRY_SCHEDULE",
            "300ms,300ms,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        )
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .start()
        .await;
    let acme = Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: None,
        scopes: Scopes::all(),
    };
    let job = AudioGenerationClient::new(audio.peer("gateway", Service::AudioGeneration).channel())
        .create_sound_effect(on_behalf(
            CreateSoundEffectRequest {
                prompt: "thunder".into(),
                duration_seconds: 4.0,
                seed: None,
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();

    test_support::wait_ready(&ingest.ops_url(Service::WebhookIngest), 200).await;
    proxy.cut();
    let path = format!("/api/replicate-webhook/sound_effect/{}", job.id);
    let base = ingest.http_url(Service::WebhookIngest);
    assert_eq!(
        post_replicate(&base, &path, "msg_down", &prediction("p1"), &secret).await,
        200,
        "accepted although audio-generation cannot say whether the job exists"
    );
    // While it is away, the completion fails with a connection error (the proxy refuses or
    // drops the connection) and is retried.
    const CONNECTION_FAILED: &str = "(error like '%(Unavailable)%' or error like '%(Cancelled)%')";
    eventually(Duration::from_secs(20), "attempts while it is down", || async {
        let rows = sql(
            &db,
            &format!("select count(*) >= 2 from ingest.inbox_attempts where outcome = 'failed' and {CONNECTION_FAILED}"),
        );
        (rows == ["t"]).then_some(())
    })
    .await;
    // One more, for a job that does not exist: accepted while nobody can say so.
    let unknown = format!("/api/replicate-webhook/sound_effect/{}", ids::JobId::new());
    assert_eq!(
        post_replicate(&base, &unknown, "msg_unknown", &prediction("p2"), &secret).await,
        200
    );
    proxy.restore();
    // Once it is back, the next attempt completes the job; the other goes to the dead letters.
    eventually(Duration::from_secs(20), "both events settled", || async {
        let rows = sql(
            &db,
            "select delivery_id || ':' || state from ingest.inbox order by delivery_id",
        );
        (rows == ["msg_down:done", "msg_unknown:dead_letter"]).then_some(())
    })
    .await;
    let dead = sql(
        &db,
        "select last_error from ingest.inbox where delivery_id = 'msg_unknown'",
    );
    assert!(dead[0].contains("does not exist"), "{dead:?}");
    let completed = sql(
        &db,
        "select count(*) from ingest.inbox_attempts a join ingest.inbox i on i.id = a.event_id \
         where i.delivery_id = 'msg_down' and a.outcome = 'succeeded'",
    );
    assert_eq!(completed, ["1"], "completed once");
    let job = AudioGenerationClient::new(audio.peer("gateway", Service::AudioGeneration).channel())
        .get_job(on_behalf(
            sonora_proto::audio::v1::GetJobRequest { id: job.id.clone() },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        job.prediction_id, "p1",
        "the webhook's prediction finished the job: {job:?}"
    );
    assert_ne!(job.status(), sonora_proto::audio::v1::JobStatus::Queued);
}

/// Stores a GitHub event row as a receiver (and, for `state`, a dispatcher) would have left it.
fn insert_github(db: &TestDatabase, delivery: &str, extra: &str, values: &str) {
    let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    sql(
        db,
        &format!(
            "insert into ingest.inbox (id, source, delivery_id, path, event_type, payload, received_at{extra}) \
             values ('{id}', 'github', '{delivery}', '/api/v1/webhooks/github', 'issues.labeled', '{{}}', now(){values})"
        ),
    );
}

#[tokio::test]
async fn what_a_stopped_process_left_is_dispatched_after_a_restart_and_old_events_go() {
    let db = TestDatabase::create().await.unwrap();
    // Migrate the schema, then stop: the rows below are what processes left behind.
    let first = Stack::new(&db).with_ingest().start().await;
    test_support::wait_ready(&first.ops_url(Service::WebhookIngest), 200).await;
    first.stop().await;
    // Committed by a receiver, never dispatched (the process stopped in between).
    insert_github(&db, "committed", ", state", ", 'received'");
    // Claimed by a dispatcher that was killed: its lease ran out.
    insert_github(
        &db,
        "killed",
        ", state, attempts, claim_id, lease_expires_at",
        ", 'dispatched', 1, gen_random_uuid(), now() - interval '1 second'",
    );
    // Claimed by a dispatcher that is alive (its lease holds): left alone.
    insert_github(
        &db,
        "held",
        ", state, attempts, claim_id, lease_expires_at",
        ", 'dispatched', 1, gen_random_uuid(), now() + interval '1 hour'",
    );
    // Settled long ago, and just now.
    insert_github(
        &db,
        "old",
        ", state, settled_at",
        ", 'done', now() - interval '8 days'",
    );
    insert_github(
        &db,
        "old-dead",
        ", state, settled_at",
        ", 'dead_letter', now() - interval '8 days'",
    );
    insert_github(&db, "recent", ", state, settled_at", ", 'done', now()");

    let _second = Stack::new(&db).with_ingest().start().await;
    let rows = eventually(
        Duration::from_secs(20),
        "the restart's dispatch",
        || async {
            let rows = sql(
                &db,
                "select delivery_id, state, attempts from ingest.inbox order by delivery_id",
            );
            (rows.len() == 4 && rows.iter().filter(|r| r.contains("|done|")).count() == 3)
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(
        rows,
        [
            "committed|done|1",
            "held|dispatched|1",
            "killed|done|2",
            "recent|done|0"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_each_woken_by_its_own_receiver() {
    const SECRET: &str = "development-github-secret-for-tests";
    let db = TestDatabase::create().await.unwrap();
    // Polling is minutes apart: only the receiver that stored an event can wake a dispatcher
    // (its own replica's) in time. A rule gives every event something to run (a publish, to the
    // outbox), so each is claimed.
    let rules = serde_json::json!([{
        "name": "publish-issues", "source": "github", "event": "issues",
        "tenant": "acme", "actions": ["publish"]
    }])
    .to_string();
    let replica = || {
        Stack::new(&db)
            .with_ingest()
            .setting(Service::WebhookIngest, "GITHUB_WEBHOOK_SECRET", SECRET)
            .setting(Service::WebhookIngest, "ROUTING_RULES", rules.clone())
            .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "5m")
            .start()
    };
    let (a, b) = (replica().await, replica().await);
    for stack in [&a, &b] {
        test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    }
    let body =
        r#"{"action":"labeled","issue":{"number":7},"repository":{"full_name":"acme/narrator"}}"#;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let signature: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sends = (0..40).map(|n| {
        let base = [&a, &b][n % 2].http_url(Service::WebhookIngest);
        let signature = signature.clone();
        async move {
            let status = http_client()
                .post(format!("{base}/api/v1/webhooks/github"))
                .header("content-type", "application/json")
                .header("x-github-event", "issues")
                .header("x-github-hook-id", "1")
                .header("x-github-delivery", format!("d-{n}"))
                .header("x-hub-signature-256", format!("sha256={signature}"))
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), 200);
        }
    });
    futures::future::join_all(sends).await;
    let states = eventually(
        Duration::from_secs(10),
        "every event dispatched",
        || async {
            let rows = sql(
                &db,
                "select state, attempts, count(*) from ingest.inbox group by 1, 2",
            );
            (rows == ["done|1|40"]).then_some(rows)
        },
    )
    .await;
    // Each event was claimed exactly once, by one of the two.
    assert_eq!(states, ["done|1|40"]);
}
