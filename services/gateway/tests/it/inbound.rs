//! Inbound webhooks through the public API, against the real webhook-ingest and delivery-worker:
//! a generic source registered (its secret shown once), posted to with Standard Webhooks, its
//! event routed to the tenant's partner endpoint, listed and shown with its attempts,
//! dead-lettered and redriven, the secret rotated, the source deleted; every route kept to its
//! tenant and to keys with the admin and webhooks scopes.

use std::time::Duration;

use internal_rpc::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::{
    TestDatabase,
    codegen::{FakeCodegen, Forced},
    eventually, http_client,
    receiver::Receiver,
};
use webhook_signature::{SigningKey, signature_header};

use crate::webhooks::{call, refused};

const TOKEN: &str = "cg-test-token-0123456789";

/// Posts `body` to webhook-ingest's `path` as a Standard Webhooks sender with `secret`.
pub(crate) async fn post_signed(base: &str, path: &str, id: &str, body: &str, secret: &str) -> u16 {
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

/// A number that no parallel test picks, from a fresh id's random digits.
fn random_digits() -> String {
    ids::EventId::new().to_string()[4..14].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_sources_and_events_through_the_public_api() {
    let db = TestDatabase::create().await.unwrap();
    let org_id = u64::from_str_radix(&random_digits(), 16).unwrap();
    let fake = FakeCodegen::start(org_id, TOKEN).await;
    // The agent run fails twice: with a two-attempt schedule, the event is dead-lettered.
    fake.force(&[Forced::ServerError, Forced::ServerError]);
    let name = format!("orders-{}", random_digits());
    let rules = json!([
        {"name": "acme-orders", "source": name, "event": "order", "tenant": "acme",
         "actions": ["publish", "agent_run"], "prompt": "Handle the new order"}
    ]);
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_gateway()
        .setting(Service::WebhookIngest, "ROUTING_RULES", rules.to_string())
        .setting(Service::WebhookIngest, "CODEGEN_API_URL", fake.base.clone())
        .setting(Service::WebhookIngest, "CODEGEN_ORG_ID", org_id.to_string())
        .setting(Service::WebhookIngest, "CODEGEN_TOKEN", TOKEN)
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .setting(Service::WebhookIngest, "INBOX_RETRY_SCHEDULE", "100ms")
        .setting(Service::WebhookIngest, "OUTBOX_POLL_INTERVAL", "50ms")
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::Gateway);
    let ingest = stack.http_url(Service::WebhookIngest);
    let acme = stack
        .api_key("acme", &[Scope::Admin, Scope::Webhooks])
        .await;
    let beta = stack
        .api_key("beta", &[Scope::Admin, Scope::Webhooks])
        .await;
    let webhooks_only = stack.api_key("acme", &[Scope::Webhooks]).await;
    let admin_only = stack.api_key("acme", &[Scope::Admin]).await;
    let sources = format!("{base}/v1/inbound/sources");
    let events = format!("{base}/v1/inbound/events");
    let redrive = format!("{base}/v1/inbound/dead-letters/redrive");

    // Registered: the secret is shown this once.
    let (status, headers, created) =
        call(Method::POST, &sources, &acme, Some(json!({"name": name}))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(created["name"], name.as_str());
    assert_eq!(created["path"], format!("/api/v1/webhooks/{name}").as_str());
    assert!(created["id"].as_str().unwrap().starts_with("src_"));
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    let (status, _, listed) = call(Method::GET, &sources, &acme, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["name"], name.as_str());
    assert!(!listed.to_string().contains("whsec_"), "{listed}");

    // Refused names say why.
    for (body, status, detail) in [
        (json!({"name": name}), 409, "name: a source named"),
        (
            json!({"name": "github"}),
            400,
            "name: github is the built-in receiver's",
        ),
        (
            json!({"name": "Two Words"}),
            400,
            "name: must be 1 to 64 characters",
        ),
        (json!({}), 400, "missing field `name`"),
        (
            json!({"name": "x", "tenant": "beta"}),
            400,
            "unknown field `tenant`",
        ),
    ] {
        let (got, detail_got) = refused(Method::POST, &sources, &acme, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {detail_got}");
        assert!(detail_got.contains(detail), "{body}: {detail_got}");
    }

    // A partner endpoint may subscribe to the events the tenant's own source forwards.
    let receiver = Receiver::start().await;
    let forwarded = format!("{name}.order.created");
    let (status, _, endpoint) = call(
        Method::POST,
        &format!("{base}/v1/webhook-endpoints"),
        &acme,
        Some(json!({"url": receiver.url("/orders"), "event_types": [forwarded, "github.push"]})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let (status, detail) = refused(
        Method::POST,
        &format!("{base}/v1/webhook-endpoints"),
        &beta,
        Some(
            json!({"url": receiver.url("/beta"), "event_types": [format!("{name}.order.created")]}),
        ),
    )
    .await;
    assert_eq!(
        status, 400,
        "another tenant's source is not beta's to subscribe to"
    );
    assert!(detail.starts_with("event_types[0]:"), "{detail}");
    let (_, _, key) = call(
        Method::GET,
        &format!(
            "{base}/v1/webhook-endpoints/{}/secret",
            endpoint["id"].as_str().unwrap()
        ),
        &acme,
        None,
    )
    .await;
    receiver.trust("/orders", key["key"].as_str().unwrap());

    // A signed webhook is stored, handed to acme's partner, and dead-lettered by its failing
    // agent run.
    let order = r#"{"type":"order.created","data":{"id":"o_1"}}"#;
    let path = created["path"].as_str().unwrap();
    assert_eq!(
        post_signed(&ingest, path, "msg_1", order, &secret).await,
        200
    );
    let listed = eventually(Duration::from_secs(30), "a dead letter", || async {
        let (_, _, page) = call(
            Method::GET,
            &format!("{events}?state=dead_letter"),
            &acme,
            None,
        )
        .await;
        (page["data"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    let event = &listed["data"][0];
    assert_eq!(event["source"], name.as_str());
    assert_eq!(event["event_type"], "order.created");
    assert_eq!(event["delivery_id"], "msg_1");
    assert!(event.get("tenants").is_none(), "{event}");
    let id = event["id"].as_str().unwrap().to_owned();
    let delivered = eventually(Duration::from_secs(30), "the partner webhook", || async {
        receiver.received_on("/orders").into_iter().next()
    })
    .await;
    assert!(delivered.verified);
    let delivered: Value = serde_json::from_str(&delivered.body).unwrap();
    assert_eq!(
        delivered["data"],
        json!({"type": "order.created", "data": {"id": "o_1"}})
    );

    // Filters and pages.
    let (status, _, by_source) = call(
        Method::GET,
        &format!("{events}?source={name}&limit=1"),
        &acme,
        None,
    )
    .await;
    assert_eq!(
        (status, by_source["data"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{by_source}"
    );
    let (_, _, none) = call(Method::GET, &format!("{events}?state=done"), &acme, None).await;
    assert_eq!(none["data"], json!([]));
    let (_, _, later) = call(
        Method::GET,
        &format!("{events}?after=2999-01-01T00:00:00Z"),
        &acme,
        None,
    )
    .await;
    assert_eq!(later["data"], json!([]));
    for (query, detail) in [
        (
            "state=lost",
            "state: must be one of received, dispatched, done, failed, dead_letter, malformed",
        ),
        ("limit=101", "limit: must be between 1 and 100"),
        ("cursor=nonsense", "cursor: is not one this API gave out"),
        (
            "after=yesterday",
            "after: must be an RFC 3339 time, such as 2026-12-02T10:00:00Z",
        ),
        (
            "source=Not%20A%20Source",
            "source: must be a source's name, such as github",
        ),
    ] {
        assert_eq!(
            refused(Method::GET, &format!("{events}?{query}"), &acme, None).await,
            (400, detail.to_owned()),
            "{query}"
        );
    }

    // One event, with its payload and attempts.
    let (status, _, detail) = call(Method::GET, &format!("{events}/{id}"), &acme, None).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["state"], "dead_letter");
    assert_eq!(
        detail["payload"],
        json!({"type": "order.created", "data": {"id": "o_1"}})
    );
    let attempts = detail["attempts"].as_array().unwrap();
    assert!(
        attempts
            .iter()
            .any(|a| a["action"] == "agent_run:acme-orders" && a["outcome"] == "failed"),
        "{detail}"
    );
    assert!(
        attempts
            .iter()
            .any(|a| a["action"] == "publish:acme-orders" && a["outcome"] == "succeeded")
    );

    // Another tenant sees none of it and can change none of it: 404, never 403.
    let (_, _, theirs) = call(Method::GET, &events, &beta, None).await;
    assert_eq!(theirs["data"], json!([]));
    let (_, _, their_sources) = call(Method::GET, &sources, &beta, None).await;
    assert_eq!(their_sources["data"], json!([]));
    let no_event = "No inbound event with this id exists for this tenant.";
    let no_source = "No inbound source with this name exists for this tenant.";
    for (method, url, body, detail) in [
        (Method::GET, format!("{events}/{id}"), None, no_event),
        (
            Method::POST,
            redrive.clone(),
            Some(json!({"id": id})),
            no_event,
        ),
        (
            Method::POST,
            format!("{sources}/{name}/secret/rotate"),
            None,
            no_source,
        ),
        (Method::DELETE, format!("{sources}/{name}"), None, no_source),
    ] {
        assert_eq!(
            refused(method.clone(), &url, &beta, body).await,
            (404, detail.to_owned()),
            "{method} {url}"
        );
    }
    let (status, _, nothing) = call(Method::POST, &redrive, &beta, None).await;
    assert_eq!((status, nothing), (202, json!({"redriven": 0})));
    let (_, _, still) = call(Method::GET, &format!("{events}/{id}"), &acme, None).await;
    assert_eq!(still["state"], "dead_letter");

    // Redriven by id: the failed action runs again, the published one does not.
    for (body, detail) in [
        (
            json!({"id": id, "source": name}),
            "id: names one event; leave source, after and before out with it",
        ),
        (
            json!({"id": "evt_nope"}),
            "id: must be an inbound event's id, evt_ and 32 hexadecimal digits",
        ),
        (json!({"ids": [id]}), "unknown field `ids`"),
    ] {
        let (status, got) = refused(Method::POST, &redrive, &acme, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}");
        assert!(got.contains(detail), "{body}: {got}");
    }
    let (status, _, redriven) = call(Method::POST, &redrive, &acme, Some(json!({"id": id}))).await;
    assert_eq!((status, &redriven), (202, &json!({"redriven": 1})));
    eventually(
        Duration::from_secs(30),
        "the redriven event done",
        || async {
            let (_, _, event) = call(Method::GET, &format!("{events}/{id}"), &acme, None).await;
            (event["state"] == "done").then_some(())
        },
    )
    .await;
    let (status, detail) = refused(Method::POST, &redrive, &acme, Some(json!({"id": id}))).await;
    assert_eq!(status, 409, "{detail}");
    assert!(detail.contains("not a dead letter"), "{detail}");
    assert_eq!(receiver.received_on("/orders").len(), 1, "published once");

    // Rotated: the new secret is shown once and signs.
    let (status, _, rotated) = call(
        Method::POST,
        &format!("{sources}/{name}/secret/rotate"),
        &acme,
        Some(json!({"old_secret_ttl_seconds": 1})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(rotated["rotated_at"].is_string(), "{rotated}");
    let later_order = r#"{"type":"order.created","data":{"id":"o_2"}}"#;
    assert_eq!(
        post_signed(&ingest, path, "msg_2", later_order, &new_secret).await,
        200
    );
    assert_eq!(
        refused(
            Method::POST,
            &format!("{sources}/{name}/secret/rotate"),
            &acme,
            Some(json!({"old_secret_ttl_seconds": 604_801}))
        )
        .await,
        (
            400,
            "old_secret_ttl_seconds: must be between 1 and 604800 (7 days)".to_owned()
        )
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        post_signed(&ingest, path, "msg_3", later_order, &secret).await,
        401,
        "the old secret is refused once its overlap is over"
    );

    // The scopes: admin and webhooks, each named when missing.
    for (key, scope) in [(&webhooks_only, "admin"), (&admin_only, "webhooks")] {
        for (method, url) in [
            (Method::GET, sources.clone()),
            (Method::POST, sources.clone()),
            (Method::GET, events.clone()),
            (Method::GET, format!("{events}/{id}")),
            (Method::POST, redrive.clone()),
            (Method::DELETE, format!("{sources}/{name}")),
        ] {
            let body = (method == Method::POST).then(|| json!({"name": "someone-else"}));
            assert_eq!(
                refused(method.clone(), &url, key, body).await,
                (
                    403,
                    format!("This API key does not have the {scope} scope.")
                ),
                "{method} {url}"
            );
        }
    }
    let (status, headers, _) = call(Method::PUT, &format!("{sources}/{name}"), &acme, None).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "DELETE");

    // Deleted: gone from the list, and its webhooks are refused.
    let (status, _, _) = call(Method::DELETE, &format!("{sources}/{name}"), &acme, None).await;
    assert_eq!(status, 204);
    let (_, _, listed) = call(Method::GET, &sources, &acme, None).await;
    assert_eq!(listed["data"], json!([]));
    assert_ne!(
        post_signed(&ingest, path, "msg_4", later_order, &new_secret).await,
        200
    );
    assert_eq!(
        refused(Method::DELETE, &format!("{sources}/{name}"), &acme, None).await,
        (404, no_source.to_owned())
    );
    assert_eq!(
        refused(Method::GET, &format!("{events}/evt_nope"), &acme, None).await,
        (404, no_event.to_owned())
    );
}
