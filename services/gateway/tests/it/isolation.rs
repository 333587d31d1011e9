//! Every `/v1` route, checked mechanically from one table that must match the OpenAPI document:
//! without a key, with a key lacking the route's scope, with an expired token, each is refused
//! with the right status and the same problem body; and a second tenant's key, with every scope,
//! gets 404 for each of the first tenant's resources and never sees them in a list.

use std::{collections::BTreeSet, time::Duration};

use chrono::Utc;
use internal_rpc::{Scope, Scopes};
use reqwest::Method;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::{TestDatabase, eventually, http_client, receiver::Receiver};

use crate::{inbound::post_signed, webhooks::call, without_plan_limits};

/// A route: method, path (with `{id}`/`{name}` standing for a resource of the first tenant),
/// the scopes it needs, and the body a valid request sends.
struct Route {
    method: Method,
    path: &'static str,
    scopes: &'static [Scope],
    body: Option<fn(&Resources) -> Value>,
}

/// The first tenant's resources, one of each kind a route can name.
struct Resources {
    endpoint: String,
    delivery: String,
    key: String,
    job: String,
    source: String,
    event: String,
    receiver_url: String,
}

fn route(
    method: Method,
    path: &'static str,
    scopes: &'static [Scope],
    body: Option<fn(&Resources) -> Value>,
) -> Route {
    Route {
        method,
        path,
        scopes,
        body,
    }
}

const NONE: &[Scope] = &[];
const INBOUND: &[Scope] = &[Scope::Admin, Scope::Webhooks];

fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        route(M::GET, "/v1/auth/verify", NONE, None),
        route(M::POST, "/v1/auth/token", NONE, Some(|_| json!({}))),
        route(M::GET, "/v1/admin/api-keys", &[Scope::Admin], None),
        route(
            M::POST,
            "/v1/admin/api-keys",
            &[Scope::Admin],
            Some(|_| json!({"name": "matrix", "scopes": ["tts"]})),
        ),
        route(M::DELETE, "/v1/admin/api-keys/{key}", &[Scope::Admin], None),
        route(M::GET, "/v1/usage", &[Scope::Usage], None),
        route(M::GET, "/v1/voices", NONE, None),
        route(
            M::POST,
            "/v1/tts",
            &[Scope::Tts],
            Some(|_| json!({"text": "Hello."})),
        ),
        route(
            M::POST,
            "/v1/audio/speech",
            &[Scope::Tts],
            Some(|_| json!({"model": "tts-1", "voice": "alloy", "input": "Hello."})),
        ),
        route(
            M::POST,
            "/v1/sound-effects",
            &[Scope::Audio],
            Some(|_| json!({"prompt": "a door creaks", "duration_seconds": 1.5})),
        ),
        route(
            M::POST,
            "/v1/background-music",
            &[Scope::Audio],
            Some(|_| json!({"prompt": "calm piano", "text": "Once upon a time."})),
        ),
        route(M::GET, "/v1/audio-jobs", &[Scope::Audio], None),
        route(M::GET, "/v1/audio-jobs/{job}", &[Scope::Audio], None),
        route(M::DELETE, "/v1/audio-jobs/{job}", &[Scope::Audio], None),
        route(M::GET, "/v1/audio-jobs/{job}/audio", &[Scope::Audio], None),
        route(M::GET, "/v1/event-types", NONE, None),
        route(M::GET, "/v1/webhook-endpoints", &[Scope::Webhooks], None),
        route(
            M::POST,
            "/v1/webhook-endpoints",
            &[Scope::Webhooks],
            Some(|r| json!({"url": r.receiver_url})),
        ),
        route(
            M::GET,
            "/v1/webhook-endpoints/{endpoint}",
            &[Scope::Webhooks],
            None,
        ),
        route(
            M::PATCH,
            "/v1/webhook-endpoints/{endpoint}",
            &[Scope::Webhooks],
            Some(|_| json!({"description": "changed"})),
        ),
        route(
            M::DELETE,
            "/v1/webhook-endpoints/{endpoint}",
            &[Scope::Webhooks],
            None,
        ),
        route(
            M::GET,
            "/v1/webhook-endpoints/{endpoint}/secret",
            &[Scope::Webhooks],
            None,
        ),
        route(
            M::POST,
            "/v1/webhook-endpoints/{endpoint}/secret/rotate",
            &[Scope::Webhooks],
            Some(|_| json!({})),
        ),
        route(
            M::GET,
            "/v1/webhook-endpoints/{endpoint}/deliveries",
            &[Scope::Webhooks],
            None,
        ),
        route(
            M::GET,
            "/v1/webhook-endpoints/{endpoint}/attempts",
            &[Scope::Webhooks],
            None,
        ),
        route(
            M::POST,
            "/v1/deliveries/{delivery}/retry",
            &[Scope::Webhooks],
            None,
        ),
        route(
            M::POST,
            "/v1/webhook-endpoints/{endpoint}/redrive",
            &[Scope::Webhooks],
            Some(|_| json!({})),
        ),
        route(
            M::POST,
            "/v1/webhook-endpoints/{endpoint}/test",
            &[Scope::Webhooks],
            Some(|_| json!({})),
        ),
        route(M::GET, "/v1/inbound/sources", INBOUND, None),
        route(
            M::POST,
            "/v1/inbound/sources",
            INBOUND,
            Some(|_| json!({"name": "matrix-source"})),
        ),
        route(M::DELETE, "/v1/inbound/sources/{source}", INBOUND, None),
        route(
            M::POST,
            "/v1/inbound/sources/{source}/secret/rotate",
            INBOUND,
            None,
        ),
        route(M::GET, "/v1/inbound/events", INBOUND, None),
        route(M::GET, "/v1/inbound/events/{event}", INBOUND, None),
        route(
            M::POST,
            "/v1/inbound/dead-letters/redrive",
            INBOUND,
            Some(|_| json!({})),
        ),
        route(M::GET, "/v1/inbound/webhook-alerts", INBOUND, None),
        route(M::GET, "/v1/inbound/routing-rules", INBOUND, None),
        // No live call here: any call is 404 for the second tenant, like a call that does not
        // exist (tests/it/telephony.rs checks it on a live call).
        route(
            M::POST,
            "/v1/calls/{call}/say",
            &[Scope::Tts],
            Some(|_| json!({"text": "Hello."})),
        ),
        route(M::POST, "/v1/calls/{call}/clear", &[Scope::Tts], None),
    ]
}

impl Resources {
    /// `path` naming the first tenant's resources.
    fn fill(&self, path: &str) -> String {
        path.replace("{endpoint}", &self.endpoint)
            .replace("{delivery}", &self.delivery)
            .replace("{key}", &self.key)
            .replace("{job}", &self.job)
            .replace("{source}", &self.source)
            .replace("{event}", &self.event)
    }
}

/// The OpenAPI document's path for a table path (`{id}` or `{name}` for every resource).
fn documented(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str(if &rest[open..=close] == "{source}" {
            "{name}"
        } else {
            "{id}"
        });
        rest = &rest[close + 1..];
    }
    out + rest
}

/// Sends one request; `auth` is the whole header value pair, if any.
async fn send(
    base: &str,
    route: &Route,
    path: &str,
    auth: Option<(&str, &str)>,
    resources: &Resources,
) -> (u16, String, Value) {
    let mut request = http_client().request(route.method.clone(), format!("{base}{path}"));
    if let Some((name, value)) = auth {
        request = request.header(name, value);
    }
    if let Some(body) = route.body {
        request = request.json(&body(resources));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or_default();
    (status, content_type, body)
}

/// A refusal: the status, and the one problem shape every refusal has.
fn assert_problem(what: &str, (status, content_type, body): &(u16, String, Value), want: u16) {
    assert_eq!(*status, want, "{what}: {body}");
    assert_eq!(content_type, "application/problem+json", "{what}: {body}");
    assert_eq!(body["status"], want, "{what}: {body}");
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: the problem has no {field}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_strangers_and_keeps_to_its_tenant() {
    let db = TestDatabase::create().await.unwrap();
    let source = format!("iso-{}", &ids::EventId::new().to_string()[4..14]);
    // A rule of the first tenant's on its source, for the rules' list; it matches no event sent.
    let rules = json!([{"name": format!("{source}-rule"), "source": source, "event": "never-sent",
                        "tenant": "acme", "actions": ["publish"]}]);
    // Hundreds of calls in a few seconds: the limits are not what is tested here.
    let stack = without_plan_limits(
        Stack::new(&db)
            .with_tts()
            .with_delivery()
            .with_ingest()
            .with_audio()
            .with_gateway()
            .setting(Service::DeliveryWorker, "WEBHOOK_RETRY_SCHEDULE", "50ms")
            .setting(Service::DeliveryWorker, "WEBHOOK_RETRY_JITTER", "0")
            .setting(Service::WebhookIngest, "ROUTING_RULES", rules.to_string()),
    )
    .start()
    .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::Gateway);
    let ingest = stack.http_url(Service::WebhookIngest);
    let acme = stack.api_key("acme", &Scope::ALL).await;
    let globex = stack.api_key("globex", &Scope::ALL).await;
    let receiver = Receiver::start().await;

    // The table is the document: every operation it names, and no other.
    let (_, doc) = test_support::get_json(&format!("{base}/openapi.json"))
        .await
        .unwrap();
    let mut in_document = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "patch", "put", "delete"] {
            if path.starts_with("/v1/") && item.get(method).is_some() {
                in_document.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let table = routes();
    let in_table: BTreeSet<_> = table
        .iter()
        .map(|r| (r.method.to_string(), documented(r.path)))
        .collect();
    assert_eq!(in_table, in_document, "the table and the OpenAPI document");

    // The first tenant's resources.
    let (status, _, endpoint) = call(
        Method::POST,
        &format!("{base}/v1/webhook-endpoints"),
        &acme,
        Some(json!({"url": receiver.url("/acme")})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint = endpoint["id"].as_str().unwrap().to_owned();
    let (status, _, sent) = call(
        Method::POST,
        &format!("{base}/v1/webhook-endpoints/{endpoint}/test"),
        &acme,
        Some(json!({})),
    )
    .await;
    assert!(status < 300, "{sent}");
    let delivery = eventually(Duration::from_secs(20), "a delivery", || {
        let (base, acme, endpoint) = (base.clone(), acme.clone(), endpoint.clone());
        async move {
            let (_, _, listed) = call(
                Method::GET,
                &format!("{base}/v1/webhook-endpoints/{endpoint}/deliveries"),
                &acme,
                None,
            )
            .await;
            listed["data"][0]["id"].as_str().map(str::to_owned)
        }
    })
    .await;
    let (status, _, key) = call(
        Method::POST,
        &format!("{base}/v1/admin/api-keys"),
        &acme,
        Some(json!({"name": "victim", "scopes": ["tts"]})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key = key["id"].as_str().unwrap().to_owned();
    let (status, _, job) = call(
        Method::POST,
        &format!("{base}/v1/sound-effects"),
        &acme,
        Some(json!({"prompt": "a door creaks", "duration_seconds": 1.5})),
    )
    .await;
    assert!(status < 300, "{job}");
    let job = job["id"].as_str().unwrap().to_owned();
    let (status, _, created) = call(
        Method::POST,
        &format!("{base}/v1/inbound/sources"),
        &acme,
        Some(json!({"name": source})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let body = r#"{"type":"order.created","id":1}"#;
    let path = format!("/api/v1/webhooks/{source}");
    assert_eq!(
        post_signed(&ingest, &path, "msg_matrix_1", body, &secret).await,
        200
    );
    let event = eventually(Duration::from_secs(20), "an inbound event", || {
        let (base, acme) = (base.clone(), acme.clone());
        async move {
            let (_, _, listed) = call(
                Method::GET,
                &format!("{base}/v1/inbound/events"),
                &acme,
                None,
            )
            .await;
            listed["data"][0]["id"].as_str().map(str::to_owned)
        }
    })
    .await;
    let resources = Resources {
        endpoint,
        delivery,
        key,
        job,
        source,
        event,
        receiver_url: receiver.url("/other"),
    };

    // An expired token of the first tenant's key, genuinely signed.
    let (_, _, verified) = call(Method::GET, &format!("{base}/v1/auth/verify"), &acme, None).await;
    let signer = gateway::token::TokenSigner::new(&settings::SecretString::from(
        gateway::DEVELOPMENT_PEPPER,
    ));
    let expired = signer.issue(&gateway::token::Claims {
        key_id: verified["id"].as_str().unwrap().parse().unwrap(),
        tenant: "acme".parse().unwrap(),
        scopes: Scopes::of(Scope::ALL),
        issued_at: Utc::now() - chrono::Duration::minutes(30),
        expires_at: Utc::now() - chrono::Duration::minutes(15),
    });
    let expired = format!("Bearer {expired}");

    for route in &table {
        let path = resources.fill(route.path);
        let what = format!("{} {}", route.method, route.path);
        let no_key = send(&base, route, &path, None, &resources).await;
        assert_problem(&format!("{what} without a key"), &no_key, 401);
        let wrong = send(
            &base,
            route,
            &path,
            Some(("x-api-key", "sk_live_not_a_key_of_anyone_at_all_000000")),
            &resources,
        )
        .await;
        assert_problem(&format!("{what} with an unknown key"), &wrong, 401);
        let stale = send(
            &base,
            route,
            &path,
            Some(("authorization", &expired)),
            &resources,
        )
        .await;
        assert_problem(&format!("{what} with an expired token"), &stale, 401);
        for &missing in route.scopes {
            let scopes: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != missing).collect();
            let lacking = stack.api_key("acme", &scopes).await;
            let refused = send(
                &base,
                route,
                &path,
                Some(("x-api-key", &lacking)),
                &resources,
            )
            .await;
            assert_problem(
                &format!("{what} without the {} scope", missing.as_str()),
                &refused,
                403,
            );
        }
        if route.path.contains('{') {
            let other = send(
                &base,
                route,
                &path,
                Some(("x-api-key", &globex)),
                &resources,
            )
            .await;
            assert_problem(&format!("{what} by another tenant"), &other, 404);
        }
    }

    // The first tenant's resources are still there, untouched by every refused call.
    for path in [
        format!("/v1/webhook-endpoints/{}", resources.endpoint),
        format!("/v1/audio-jobs/{}", resources.job),
        format!("/v1/inbound/events/{}", resources.event),
    ] {
        let (status, _, body) = call(Method::GET, &format!("{base}{path}"), &acme, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let (status, _, rules) = call(
        Method::GET,
        &format!("{base}/v1/inbound/routing-rules"),
        &acme,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rules}");
    assert_eq!(rules["data"][0]["source"], resources.source.as_str());

    // And the second tenant's lists never show them.
    for (path, id) in [
        ("/v1/webhook-endpoints", &resources.endpoint),
        ("/v1/audio-jobs", &resources.job),
        ("/v1/admin/api-keys", &resources.key),
        ("/v1/inbound/sources", &resources.source),
        ("/v1/inbound/events", &resources.event),
        ("/v1/inbound/routing-rules", &resources.source),
    ] {
        let (status, _, listed) = call(Method::GET, &format!("{base}{path}"), &globex, None).await;
        assert_eq!(status, 200, "{path}: {listed}");
        assert!(
            !listed.to_string().contains(id.as_str()),
            "{path}: {listed}"
        );
    }
    let (status, _, usage) = call(
        Method::GET,
        &format!("{base}/v1/usage?key_id={}", resources.key),
        &globex,
        None,
    )
    .await;
    assert!(
        status == 404 || !usage.to_string().contains(&resources.key),
        "{status} {usage}"
    );
}
