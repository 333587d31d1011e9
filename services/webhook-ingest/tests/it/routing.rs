//! Routing rules: a GitHub event handed to a tenant's partners through the outbox and
//! delivery-worker, and to the code-generation API as an agent run (the fake in test-support),
//! with its rate limit and failures retried and its refusals dead-lettered.

use std::time::Duration;

use internal_rpc::{Principal, Scopes, on_behalf};
use sonora_proto::delivery::v1::{
    CreateEndpointRequest, delivery_service_client::DeliveryServiceClient,
};
use test_stack::{Service, Stack};
use test_support::{
    TestDatabase,
    codegen::{FakeCodegen, Forced},
    eventually, http_client,
    receiver::Receiver,
};

use crate::sql;

const SECRET: &str = "development-github-secret-for-tests";
const TOKEN: &str = "cg-test-token-0123456789";

const LABELED: &str = r#"{"action":"labeled","issue":{"number":7,"title":"Sound is too quiet","labels":[{"name":"agent"}]},"label":{"name":"agent"},"repository":{"full_name":"acme/narrator"},"sender":{"login":"octocat"}}"#;

fn rules() -> String {
    serde_json::json!([{
        "name": "agent-on-label",
        "source": "github",
        "event": "issues",
        "action": "labeled",
        "repository": "acme/*",
        "label": "agent",
        "tenant": "acme",
        "actions": ["publish", "agent_run"],
        "prompt": "Fix {repository}#{issue.number}: {issue.title}"
    }])
    .to_string()
}

fn sign(body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={tag}")
}

async fn post_github(base: &str, event: &str, delivery: &str, body: &str) {
    let response = http_client()
        .post(format!("{base}/api/v1/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-hook-id", "42")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(body))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// An organisation id of this test alone: the agent-run budget is counted per organisation in
/// the shared Redis.
fn unique_org() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_fields().0)
}

async fn start(db: &TestDatabase, fake: &FakeCodegen, extra: &[(&str, &str)]) -> Stack {
    let mut builder = Stack::new(db)
        .with_delivery()
        .with_ingest()
        .setting(Service::WebhookIngest, "GITHUB_WEBHOOK_SECRET", SECRET)
        .setting(Service::WebhookIngest, "ROUTING_RULES", rules())
        .setting(Service::WebhookIngest, "CODEGEN_API_URL", fake.base.clone())
        .setting(
            Service::WebhookIngest,
            "CODEGEN_ORG_ID",
            fake.org_id.to_string(),
        )
        .setting(Service::WebhookIngest, "CODEGEN_TOKEN", TOKEN)
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .setting(
            Service::WebhookIngest,
            "INBOX_RETRY_SCHEDULE",
            "300ms,300ms",
        );
    for (name, value) in extra {
        builder = builder.setting(Service::WebhookIngest, name, *value);
    }
    let stack = builder.start().await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labeled_issue_reaches_a_partner_signed_and_starts_an_agent_run() {
    let db = TestDatabase::create().await.unwrap();
    let partner = Receiver::start().await;
    let fake = FakeCodegen::start(unique_org(), TOKEN).await;
    // The API's rate limit answers the first run: it is tried again, not dropped.
    fake.force(&[Forced::RateLimited {
        retry_after: Some(1),
    }]);
    let stack = start(&db, &fake, &[]).await;

    // acme's partner endpoint, subscribed to the event type the rule publishes.
    let acme = Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: None,
        scopes: Scopes::all(),
    };
    let created =
        DeliveryServiceClient::new(stack.peer("gateway", Service::DeliveryWorker).channel())
            .create_endpoint(on_behalf(
                CreateEndpointRequest {
                    url: partner.url("/acme"),
                    event_types: vec!["github.issues.labeled".into()],
                    ..Default::default()
                },
                &acme,
            ))
            .await
            .unwrap()
            .into_inner();
    partner.trust("/acme", &created.verification_key);

    let base = stack.http_url(Service::WebhookIngest);
    post_github(&base, "issues", "d-labeled", LABELED).await;
    // Not matched by the rule: another repository, another action.
    post_github(
        &base,
        "issues",
        "d-other-repo",
        &LABELED.replace("acme/narrator", "zeta/narrator"),
    )
    .await;
    post_github(
        &base,
        "issues",
        "d-opened",
        &LABELED.replace("\"labeled\"", "\"opened\""),
    )
    .await;

    // The partner receives it, signed, through the outbox, the relay and delivery-worker.
    let received = eventually(Duration::from_secs(30), "the partner's webhook", || async {
        partner.received_on("/acme").into_iter().next()
    })
    .await;
    assert!(
        received.verified,
        "signed with the endpoint's secret: {received:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&received.body).unwrap();
    assert_eq!(body["source"], "github");
    assert_eq!(body["type"], "issues.labeled");
    assert_eq!(body["delivery_id"], "42:d-labeled");
    assert_eq!(body["data"]["issue"]["title"], "Sound is too quiet");

    // The agent run: throttled once (not counted against the schedule), then started.
    let rows = eventually(Duration::from_secs(30), "the event done", || async {
        let rows = sql(
            &db,
            "select delivery_id, state, attempts, array_to_string(tenants, ',') from ingest.inbox order by delivery_id",
        );
        (rows.iter().all(|r| r.contains("|done|"))).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        [
            "42:d-labeled|done|1|acme",
            // No rule matches these two: stored as done, never claimed.
            "42:d-opened|done|0|",
            "42:d-other-repo|done|0|"
        ]
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    for request in &requests {
        assert_eq!(request.authorization, format!("Bearer {TOKEN}"));
        assert_eq!(request.org_id, fake.org_id.to_string());
        assert_eq!(
            request.body["prompt"],
            "Fix acme/narrator#7: Sound is too quiet"
        );
        assert_eq!(request.body["metadata"]["rule"], "agent-on-label");
    }
    let attempts = sql(
        &db,
        "select a.action, a.outcome, coalesce(a.result, '') from ingest.inbox_attempts a \
         join ingest.inbox i on i.id = a.event_id where i.delivery_id = '42:d-labeled' order by a.id",
    );
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts[0].starts_with("publish:agent-on-label|succeeded|{\"outbox_event_id\":\"evt_"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1], "agent_run:agent-on-label|throttled|");
    let run: serde_json::Value = serde_json::from_str(
        attempts[2]
            .strip_prefix("agent_run:agent-on-label|succeeded|")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(run["agent_run_id"], 1001);
    assert_eq!(run["web_url"], "https://codegen.com/agent/trace/1001");
    // The publish ran once although the event was dispatched twice: one partner webhook.
    assert_eq!(partner.received_on("/acme").len(), 1);
    assert_eq!(sql(&db, "select count(*) from ingest.outbox"), ["1"]);
}

#[tokio::test]
async fn a_failing_agent_run_is_retried_and_a_refused_one_dead_lettered() {
    let db = TestDatabase::create().await.unwrap();
    let fake = FakeCodegen::start(unique_org(), TOKEN).await;
    fake.force(&[Forced::ServerError]);
    let stack = start(&db, &fake, &[]).await;
    let base = stack.http_url(Service::WebhookIngest);
    post_github(&base, "issues", "d-1", LABELED).await;
    eventually(Duration::from_secs(20), "done after a retry", || async {
        (sql(&db, "select state, attempts from ingest.inbox") == ["done|2"]).then_some(())
    })
    .await;
    assert_eq!(
        sql(
            &db,
            "select outcome, coalesce(error, '') like '%500%' from ingest.inbox_attempts where action like 'agent_run:%' order by id"
        ),
        ["failed|t", "succeeded|f"]
    );
    drop(stack);

    // A token the API refuses: no retry mends it, so the event goes to the dead letters at once.
    let db = TestDatabase::create().await.unwrap();
    let stack = start(
        &db,
        &fake,
        &[("CODEGEN_TOKEN", "cg-a-token-it-does-not-know")],
    )
    .await;
    post_github(
        &stack.http_url(Service::WebhookIngest),
        "issues",
        "d-2",
        LABELED,
    )
    .await;
    let row = eventually(Duration::from_secs(20), "the dead letter", || async {
        let rows = sql(&db, "select state, attempts, last_error from ingest.inbox");
        rows.first()
            .filter(|r| r.starts_with("dead_letter|"))
            .cloned()
    })
    .await;
    assert!(
        row.starts_with("dead_letter|1|agent_run: the code-generation API answered 401"),
        "{row}"
    );
    assert!(!row.contains("cg-a-token"), "no secret in the error: {row}");
}
