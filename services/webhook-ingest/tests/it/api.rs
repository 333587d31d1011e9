//! The WebhookIngest gRPC API for the gateway: listing the inbox page by page, one event with
//! its attempts, redriving dead letters, each scoped to the tenant of the calling client.

use std::time::Duration;

use internal_rpc::{Scope, Scopes, on_behalf};
use sonora_proto::ingest::v1::{
    GetInboxEventRequest, InboxState, ListInboxEventsRequest, RedriveDeadLettersRequest,
    webhook_ingest_client::WebhookIngestClient,
};
use test_stack::{Service, Stack};
use test_support::{
    TestDatabase,
    codegen::{FakeCodegen, Forced},
    eventually, http_client,
};

use crate::{client_of, sql};

const SECRET: &str = "development-github-secret-for-tests";
const TOKEN: &str = "cg-test-token-0123456789";

fn sign(body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={tag}")
}

async fn post_github(base: &str, event: &str, delivery: &str, body: &str) -> String {
    let response = http_client()
        .post(format!("{base}/api/v1/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-hook-id", "9")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(body))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_and_redrive_their_own_events_and_operators_all() {
    let db = TestDatabase::create().await.unwrap();
    let fake = FakeCodegen::start(u64::from(uuid::Uuid::new_v4().as_fields().0), TOKEN).await;
    // The agent run fails twice: with a two-attempt schedule, its event is dead-lettered.
    fake.force(&[Forced::ServerError, Forced::ServerError]);
    let rules = serde_json::json!([
        {"name": "acme-issues", "source": "github", "event": "issues", "tenant": "acme", "actions": ["publish"]},
        {"name": "beta-issues", "source": "github", "event": "issues", "tenant": "beta", "actions": ["publish"]},
        {"name": "beta-push", "source": "github", "event": "push", "tenant": "beta",
         "actions": ["publish", "agent_run"], "prompt": "Review the push to {repository}"}
    ]);
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(Service::WebhookIngest, "GITHUB_WEBHOOK_SECRET", SECRET)
        .setting(Service::WebhookIngest, "ROUTING_RULES", rules.to_string())
        .setting(Service::WebhookIngest, "CODEGEN_API_URL", fake.base.clone())
        .setting(
            Service::WebhookIngest,
            "CODEGEN_ORG_ID",
            fake.org_id.to_string(),
        )
        .setting(Service::WebhookIngest, "CODEGEN_TOKEN", TOKEN)
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .setting(Service::WebhookIngest, "INBOX_RETRY_SCHEDULE", "100ms")
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::WebhookIngest);
    let issue = post_github(
        &base,
        "issues",
        "d-issue",
        r#"{"action":"opened","issue":{"number":1},"repository":{"full_name":"acme/narrator"}}"#,
    )
    .await;
    let push = post_github(
        &base,
        "push",
        "d-push",
        r#"{"ref":"refs/heads/main","repository":{"full_name":"beta/site"}}"#,
    )
    .await;
    eventually(Duration::from_secs(20), "both events settled", || async {
        let rows = sql(
            &db,
            "select delivery_id, state from ingest.inbox order by delivery_id",
        );
        (rows == ["9:d-issue|done", "9:d-push|dead_letter"]).then_some(())
    })
    .await;

    let channel = stack.peer("gateway", Service::WebhookIngest).channel();
    let mut api = WebhookIngestClient::new(channel);
    let acme = client_of("acme", Scopes::of([Scope::Webhooks]));
    let beta = client_of("beta", Scopes::of([Scope::Webhooks]));
    let list = |tenant: &str, state: InboxState| ListInboxEventsRequest {
        tenant: tenant.into(),
        state: state.into(),
        ..Default::default()
    };

    // acme sees the issue, handed to it, and learns only that it is its own.
    let listed = api
        .list_inbox_events(on_behalf(list("", InboxState::Unspecified), &acme))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 1, "{listed:?}");
    assert_eq!(listed.events[0].id, issue);
    assert_eq!(listed.events[0].tenants, ["acme"]);
    assert_eq!(listed.events[0].event_type, "issues.opened");
    let shown = api
        .get_inbox_event(on_behalf(
            GetInboxEventRequest {
                id: issue.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(shown.payload.contains("acme/narrator"));
    let actions: Vec<_> = shown.attempts.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["publish:acme-issues"], "beta's rule stays hidden");
    let hidden = api
        .get_inbox_event(on_behalf(
            GetInboxEventRequest {
                id: push.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    // Nor can it name another tenant, or redrive beta's dead letter.
    let other = api
        .list_inbox_events(on_behalf(list("beta", InboxState::Unspecified), &acme))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied);
    let redriven = api
        .redrive_dead_letters(on_behalf(RedriveDeadLettersRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven, 0);
    // A key without the webhooks scope is refused.
    let audio_only = client_of("acme", Scopes::of([Scope::Audio]));
    let refused = api
        .list_inbox_events(on_behalf(list("", InboxState::Unspecified), &audio_only))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // beta sees both, newest first, and its dead letter with every attempt of its rules.
    let listed = api
        .list_inbox_events(on_behalf(list("", InboxState::Unspecified), &beta))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [push.clone(), issue.clone()]);
    let dead = api
        .list_inbox_events(on_behalf(list("", InboxState::DeadLetter), &beta))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.events.len(), 1);
    assert!(
        dead.events[0]
            .last_error
            .contains("(gave up after 2 attempts)"),
        "{:?}",
        dead.events[0]
    );
    let shown = api
        .get_inbox_event(on_behalf(
            GetInboxEventRequest {
                id: push.clone(),
                ..Default::default()
            },
            &beta,
        ))
        .await
        .unwrap()
        .into_inner();
    let attempts: Vec<_> = shown
        .attempts
        .iter()
        .map(|a| format!("{} {} {}", a.attempt, a.action, a.outcome))
        .collect();
    assert_eq!(
        attempts,
        [
            "1 publish:beta-push succeeded",
            "1 agent_run:beta-push failed",
            "2 agent_run:beta-push failed"
        ]
    );
    // The issue went to acme too: beta may not redrive it (it is not a dead letter either).
    let not_dead = api
        .redrive_dead_letters(on_behalf(
            RedriveDeadLettersRequest {
                id: issue.clone(),
                ..Default::default()
            },
            &beta,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        not_dead.code(),
        tonic::Code::FailedPrecondition,
        "{not_dead:?}"
    );
    // Its own dead letter it redrives: only the agent run runs again, and now succeeds.
    let redriven = api
        .redrive_dead_letters(on_behalf(
            RedriveDeadLettersRequest {
                id: push.clone(),
                ..Default::default()
            },
            &beta,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven, 1);
    eventually(
        Duration::from_secs(20),
        "the redriven event done",
        || async {
            (sql(
                &db,
                "select state from ingest.inbox where delivery_id = '9:d-push'",
            ) == ["done"])
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        sql(
            &db,
            "select action, outcome from ingest.inbox_attempts a join ingest.inbox i on i.id = a.event_id \
             where i.delivery_id = '9:d-push' order by a.id"
        ),
        [
            "publish:beta-push|succeeded",
            "agent_run:beta-push|failed",
            "agent_run:beta-push|failed",
            "agent_run:beta-push|succeeded"
        ],
        "the publish that succeeded was not run again"
    );

    // The gateway on its own (an operator's tool) sees everything, page by page.
    let page = api
        .list_inbox_events(ListInboxEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].id, push);
    assert_eq!(page.events[0].tenants, ["beta"]);
    let next = api
        .list_inbox_events(ListInboxEventsRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.events.len(), 1);
    assert_eq!(next.events[0].id, issue);
    assert_eq!(next.events[0].tenants, ["acme", "beta"]);
    assert!(next.next_page_token.is_empty());
    let acme_only = api
        .list_inbox_events(list("acme", InboxState::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme_only.events.len(), 1);
    for bad in [
        ListInboxEventsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        },
        ListInboxEventsRequest {
            page_size: 1000,
            ..Default::default()
        },
        ListInboxEventsRequest {
            source: "Git Hub".into(),
            ..Default::default()
        },
    ] {
        let status = api.list_inbox_events(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    // Only the gateway may call it.
    let mut as_audio = WebhookIngestClient::new(
        stack
            .peer("audio-generation", Service::WebhookIngest)
            .channel(),
    );
    let status = as_audio
        .list_inbox_events(ListInboxEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}
