//! Generic sources: registered over gRPC with a sealed `whsec_` secret, posting Standard
//! Webhooks to /api/v1/webhooks/{source}, routed by the rules, rotated and deleted.

use std::time::Duration;

use internal_rpc::{Scope, Scopes, on_behalf};
use sonora_proto::ingest::v1::{
    CreateSourceRequest, DeleteSourceRequest, ListInboxEventsRequest, ListSourcesRequest,
    RotateSourceSecretRequest, webhook_ingest_client::WebhookIngestClient,
};
use test_stack::{Service, Stack};
use test_support::{TestDatabase, eventually, http_client};
use webhook_signature::{SigningKey, signature_header};

use crate::{client_of, sql};

async fn post(base: &str, path: &str, id: &str, body: &str, secret: &str) -> u16 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_source_posts_signed_webhooks_routed_by_the_rules() {
    let db = TestDatabase::create().await.unwrap();
    let name = format!(
        "billing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let rules = serde_json::json!([
        {"name": "billing", "source": name, "event": "invoice", "action": "paid", "tenant": "acme", "actions": ["publish"]}
    ]);
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(Service::WebhookIngest, "ROUTING_RULES", rules.to_string())
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::WebhookIngest);
    let mut api = WebhookIngestClient::new(stack.peer("gateway", Service::WebhookIngest).channel());
    let (acme, beta) = (
        client_of("acme", Scopes::of([Scope::Webhooks])),
        client_of("beta", Scopes::of([Scope::Webhooks])),
    );

    let created = api
        .create_source(on_behalf(
            CreateSourceRequest {
                name: name.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.secret.starts_with("whsec_"));
    assert_eq!(created.path, format!("/api/v1/webhooks/{name}"));
    assert_eq!(created.source.as_ref().unwrap().tenant, "acme");
    // The secret is sealed at rest: not in the table in any form.
    let key_text = created.secret.trim_start_matches("whsec_").to_owned();
    let dump = sql(
        &db,
        "select encode(secret, 'escape') || encode(secret, 'base64') || encode(secret, 'hex') from ingest.sources",
    )
    .join("");
    assert!(!dump.contains(&key_text) && !dump.contains("whsec_"));

    // Names: taken, reserved, malformed.
    for (bad, code) in [
        (name.as_str(), tonic::Code::AlreadyExists),
        ("github", tonic::Code::InvalidArgument),
        ("Billing Two", tonic::Code::InvalidArgument),
    ] {
        let status = api
            .create_source(on_behalf(
                CreateSourceRequest {
                    name: bad.into(),
                    ..Default::default()
                },
                &beta,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{bad}: {status:?}");
    }

    let path = created.path.clone();
    let paid = r#"{"type":"invoice.paid","timestamp":"2026-12-02T10:00:00Z","data":{"id":"in_1"}}"#;
    assert_eq!(
        post(&base, &path, "msg_1", paid, &created.secret).await,
        200
    );
    assert_eq!(
        post(&base, &path, "msg_1", paid, &created.secret).await,
        200,
        "a retry"
    );
    let wrong = SigningKey::generate_hmac();
    assert_eq!(post(&base, &path, "msg_2", paid, &wrong).await, 401);
    assert_eq!(
        post(&base, "/api/v1/webhooks/nobody-here", "msg_3", paid, &wrong).await,
        404
    );
    // Stored once, routed by the rule to acme's partners, shown to acme.
    let rows = eventually(Duration::from_secs(20), "the event done", || async {
        let rows = sql(
            &db,
            "select event_type, state, array_to_string(tenants, ',') from ingest.inbox",
        );
        (rows.len() == 1 && rows[0].contains("|done|")).then_some(rows)
    })
    .await;
    assert_eq!(rows, ["invoice.paid|done|acme"]);
    assert_eq!(
        sql(&db, "select event_type from ingest.outbox"),
        [format!("{name}.invoice.paid")]
    );
    let listed = api
        .list_inbox_events(on_behalf(ListInboxEventsRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 1);
    assert_eq!(listed.events[0].source, name);

    // Another tenant neither sees nor touches acme's source.
    let theirs = api
        .list_sources(on_behalf(ListSourcesRequest::default(), &beta))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.sources.is_empty());
    let status = api
        .rotate_source_secret(on_behalf(
            RotateSourceSecretRequest {
                name: name.clone(),
                ..Default::default()
            },
            &beta,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // A rotation: the new secret verifies, and the old one still does for its grace period.
    let rotated = api
        .rotate_source_secret(on_behalf(
            RotateSourceSecretRequest {
                name: name.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, created.secret);
    assert_eq!(
        post(&base, &path, "msg_4", paid, &rotated.secret).await,
        200
    );
    assert_eq!(
        post(&base, &path, "msg_5", paid, &created.secret).await,
        200
    );
    // Rotated again with a one-second grace period: the secret before the last is gone, the
    // last one is accepted until its grace period ends, then refused.
    let again = api
        .rotate_source_secret(on_behalf(
            RotateSourceSecretRequest {
                name: name.clone(),
                old_secret_ttl_seconds: 1,
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        post(&base, &path, "msg_6", paid, &created.secret).await,
        401
    );
    assert_eq!(post(&base, &path, "msg_7", paid, &again.secret).await, 200);
    let mut n = 0;
    eventually(Duration::from_secs(10), "the grace period over", || {
        n += 1;
        let (base, path, secret) = (base.clone(), path.clone(), rotated.secret.clone());
        async move {
            let status = post(&base, &path, &format!("msg_grace_{n}"), paid, &secret).await;
            (status == 401).then_some(())
        }
    })
    .await;

    // Deleted: its path is gone; its stored events stay.
    api.delete_source(on_behalf(
        DeleteSourceRequest {
            name: name.clone(),
            ..Default::default()
        },
        &acme,
    ))
    .await
    .unwrap();
    assert_eq!(post(&base, &path, "msg_8", paid, &again.secret).await, 404);
    assert_eq!(
        sql(
            &db,
            "select count(*) from ingest.inbox where delivery_id in ('msg_1', 'msg_4', 'msg_5', 'msg_7')"
        ),
        ["4"]
    );
}
