//! The console at `/console`: sign-in and its cookie, CSRF on every change, session expiry,
//! tenant isolation and escaping, webhook alerts and routing rules over plain HTTP; then the
//! whole of it in a real browser (Debian's Chromium driven over WebDriver by chromedriver)
//! against the real stack and the Replicate simulator.

use std::{path::PathBuf, time::Duration};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use internal_rpc::Scope;
use serde_json::{Value, json};
use test_stack::{Service, Simulator, Stack};
use test_support::{
    TestDatabase, eventually,
    receiver::{Behavior, Receiver},
};

use crate::{Gateway, plain};

/// A client that shows redirects instead of following them and keeps no cookies.
fn client() -> reqwest::Client {
    // Installs the workspace's crypto provider, which reqwest needs before any client is built.
    drop(test_support::http_client());
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A form body, as a browser sends it.
fn form_body(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A signed-in console session: its cookie pair (`sonora_console=…`) and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    set_cookie: String,
}

async fn sign_in(base: &str, key: &str) -> Session {
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", key)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    assert_eq!(response.headers()["location"], "/console");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let (status, page) = page(base, "/console", &cookie).await;
    assert_eq!(status, 200, "{page}");
    let csrf = page
        .split(r#"<meta name="csrf-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_owned();
    Session {
        cookie,
        csrf,
        set_cookie,
    }
}

/// GETs a console page with a cookie: status and body.
async fn page(base: &str, path: &str, cookie: &str) -> (u16, String) {
    let response = client()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A `/v1` call made as the console's scripts make it: the cookie, and `csrf` when given.
async fn v1(
    base: &str,
    method: reqwest::Method,
    path: &str,
    session: &Session,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{base}{path}"))
        .header("cookie", &session.cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_pages_keep_a_strict_csp() {
    let gateway = plain().await;
    let base = &gateway.base;

    // Not signed in: every page sends to the sign-in page, which is served with its own CSP.
    let (status, _) = page(base, "/console/endpoints", "").await;
    assert_eq!(status, 303);
    let response = client()
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");

    // A wrong key: 401, no cookie.
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", "cw_live_not-a-key-at-all-0000000000")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(!response.headers().contains_key("set-cookie"));
    assert!(response.text().await.unwrap().contains("not valid"));

    // A form far larger than any key: 413 as a problem, nothing read past the limit.
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}", "k".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // A token is for programs: the console takes keys.
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[(
            "key",
            "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
        )]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(!response.headers().contains_key("set-cookie"));

    let session = sign_in(base, &gateway.key).await;
    let flags = &session.set_cookie;
    assert!(flags.starts_with("sonora_console="), "{flags}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=1800"] {
        assert!(flags.contains(flag), "{flag} in {flags}");
    }
    assert!(
        !flags.contains("Secure"),
        "development serves plain HTTP: {flags}"
    );
    assert!(
        !flags.contains(&gateway.key),
        "the key is never in the cookie"
    );

    for path in [
        "/console",
        "/console/endpoints",
        "/console/playground",
        "/console/keys",
        "/console/audio",
        "/console/inbound",
    ] {
        let response = client()
            .get(format!("{base}{path}"))
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        assert_eq!(
            response.headers()["content-security-policy"],
            gateway::console::CSP
        );
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("<script>") && !body.contains(" style="),
            "{path}: nothing inline"
        );
        assert!(
            body.contains("Tenant <strong id=\"tenant\">acme</strong>"),
            "{path}"
        );
    }

    // The assets are served under hashed names for a year, and nothing else under the folder.
    let css = gateway::console::assets::url("console.css");
    let response = client().get(format!("{base}{css}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let (status, _) = page(base, "/console/assets/console.css", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn changes_need_the_session_csrf_token() {
    let gateway = plain().await;
    let base = &gateway.base;
    let session = sign_in(base, &gateway.key).await;
    let receiver = Receiver::start().await;
    let body = json!({ "url": receiver.url("/csrf") });
    let post = reqwest::Method::POST;

    // The cookie alone is no credential on /v1, and a wrong token is refused.
    let (status, problem) = v1(
        base,
        post.clone(),
        "/v1/webhook-endpoints",
        &session,
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 401, "{problem}");
    let (status, problem) = v1(
        base,
        post.clone(),
        "/v1/webhook-endpoints",
        &session,
        Some("forged"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("CSRF"),
        "{problem}"
    );
    let (status, listed) = v1(
        base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &session,
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{listed}");
    let (status, listed) = v1(
        base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &session,
        Some(&session.csrf),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        0,
        "nothing was made"
    );

    let (status, made) = v1(
        base,
        post,
        "/v1/webhook-endpoints",
        &session,
        Some(&session.csrf),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{made}");

    // Sign-out is a change too: without the token it is refused and the session lasts.
    let response = client()
        .post(format!("{base}/console/sign-out"))
        .header("cookie", &session.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("csrf", "forged")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(page(base, "/console", &session.cookie).await.0, 200);
    let response = client()
        .post(format!("{base}/console/sign-out"))
        .header("cookie", &session.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("csrf", session.csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let cleared = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(page(base, "/console", &session.cookie).await.0, 303);
    let (status, _) = v1(
        base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &session,
        Some(&session.csrf),
        None,
    )
    .await;
    assert_eq!(status, 401, "a signed-out session opens nothing");

    // Sign-in posted from another site (login CSRF) is refused before the key is looked at.
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", gateway.key.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(!response.headers().contains_key("set-cookie"));
}

#[tokio::test]
async fn sessions_end_at_their_ttl() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_gateway()
        .setting(Service::Gateway, "CONSOLE_SESSION_TTL", "6s")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &Scope::ALL).await;
    // The sign-in alone (a loaded machine may take seconds to render a page): the session is
    // stored in Redis for the TTL, under the SHA-256 of its id.
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", key.as_str())]))
        .send()
        .await
        .unwrap();
    // The session was stored before the answer came.
    let signed_in = std::time::Instant::now();
    assert_eq!(response.status(), 303);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.contains("Max-Age=6;"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let id = cookie.trim_start_matches("sonora_console=");
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let redis = deadpool_redis::redis::Client::open(test_support::redis_url()).unwrap();
    // The client's default limits (1 s to connect, 0.5 s to answer) are for servers; a busy
    // test machine needs more.
    let patient = deadpool_redis::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = redis
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap();
    let ttl: i64 = deadpool_redis::redis::cmd("PTTL")
        .arg(format!("console:session:{hex}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 6_000,
        "the session's TTL in Redis: {ttl} ms"
    );
    let session = Session {
        cookie,
        csrf: "any".to_owned(),
        set_cookie,
    };
    tokio::time::sleep(Duration::from_millis(6_500).saturating_sub(signed_in.elapsed())).await;
    let (status, _) = page(&base, "/console", &session.cookie).await;
    assert_eq!(status, 303, "the session has ended");
    let (status, problem) = v1(
        &base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &session,
        Some(&session.csrf),
        None,
    )
    .await;
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("session has ended"),
        "{problem}"
    );
}

#[tokio::test]
async fn revoking_the_key_ends_its_sessions() {
    let gateway = plain().await;
    let base = &gateway.base;
    let key = gateway.stack.api_key("acme", &[Scope::Webhooks]).await;
    let session = sign_in(base, &key).await;
    let (status, _) = v1(
        base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &session,
        Some(&session.csrf),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let verified: Value = test_support::http_client()
        .get(format!("{base}/v1/auth/verify"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = verified["id"].as_str().unwrap();
    let revoked = test_support::http_client()
        .delete(format!("{base}/v1/admin/api-keys/{id}"))
        .header("x-api-key", &gateway.key)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{revoked:?}");
    let (status, problem) = v1(
        base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &session,
        Some(&session.csrf),
        None,
    )
    .await;
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("revoked"),
        "{problem}"
    );
    assert_eq!(page(base, "/console", &session.cookie).await.0, 303);
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_gateway()
        .setting(Service::Gateway, "CONSOLE_SIGN_IN_LIMIT", "3")
        .start()
        .await;
    let gateway = Gateway {
        key: stack.api_key("acme", &Scope::ALL).await,
        base: stack.http_url(Service::Gateway),
        ops: stack.ops_url(Service::Gateway),
        stack,
    };
    let mut last = 0;
    // Other tests sign in from 127.0.0.1 too, so the count may only be higher.
    for _ in 0..=3 {
        last = client()
            .post(format!("{}/console/sign-in", gateway.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("key", "cw_live_guessing-a-key-000000000000")]))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    // Even the right key waits for the window.
    let response = client()
        .post(format!("{}/console/sign-in", gateway.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", gateway.key.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_and_what_it_shows_is_escaped() {
    let gateway = plain().await;
    let base = &gateway.base;
    let receiver = Receiver::start().await;
    let acme = sign_in(base, &gateway.key).await;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)> \"quoted\" & more";
    let (status, made) = v1(
        base,
        reqwest::Method::POST,
        "/v1/webhook-endpoints",
        &acme,
        Some(&acme.csrf),
        Some(json!({ "url": format!("{}?q=%22%3E%3Csvg%20onload=alert(3)%3E", receiver.url("/xss")), "description": hostile })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap();
    for path in [
        "/console/endpoints".to_owned(),
        format!("/console/endpoints/{id}"),
    ] {
        let (status, body) = page(base, &path, &acme.cookie).await;
        assert_eq!(status, 200);
        assert!(
            !body.contains("<script>alert") && !body.contains("<img src=x"),
            "{path}: {body}"
        );
        assert!(!body.contains("<svg onload"), "{path}");
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; &quot;quoted&quot; &amp; more"),
            "{path}: {body}"
        );
    }

    // Another tenant's admin sees none of it, on the pages or through its session on /v1.
    let other_key = gateway.stack.api_key("globex", &Scope::ALL).await;
    let globex = sign_in(base, &other_key).await;
    let (_, list) = page(base, "/console/endpoints", &globex.cookie).await;
    assert!(list.contains("No partner endpoints yet."), "{list}");
    assert!(!list.contains(id) && !list.contains("/xss"), "{list}");
    let (status, detail) = page(base, &format!("/console/endpoints/{id}"), &globex.cookie).await;
    assert_eq!(status, 200);
    assert!(
        !detail.contains("/xss") && !detail.contains("quoted"),
        "{detail}"
    );
    let (status, _) = v1(
        base,
        reqwest::Method::GET,
        &format!("/v1/webhook-endpoints/{id}"),
        &globex,
        Some(&globex.csrf),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Acme's token does not open globex's session.
    let (status, _) = v1(
        base,
        reqwest::Method::GET,
        "/v1/webhook-endpoints",
        &globex,
        Some(&acme.csrf),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (_, keys) = page(base, "/console/keys", &globex.cookie).await;
    assert_eq!(
        keys.matches("<tr data-key=").count(),
        1,
        "globex's one key: {keys}"
    );
    let (_, keys) = page(base, "/console/keys", &acme.cookie).await;
    assert_eq!(
        keys.matches("<tr data-key=").count(),
        1,
        "acme's one key: {keys}"
    );
}

/// Posts `times` webhooks to webhook-ingest's `path` that it refuses (no valid signature), each
/// a failure its monitor counts.
async fn fail(ingest: &str, path: &str, times: usize) {
    for n in 0..times {
        let status = test_support::http_client()
            .post(format!("{ingest}{path}"))
            .header("content-type", "application/json")
            .header("webhook-id", format!("msg_bad_{n}"))
            .header(
                "webhook-timestamp",
                chrono::Utc::now().timestamp().to_string(),
            )
            .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
            .header("x-hub-signature-256", "sha256=00")
            .header("x-github-event", "issues")
            .header("x-github-delivery", format!("bad-{n}"))
            .body(r#"{"type":"order.created"}"#)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{path}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_alerts_and_routing_rules_reach_their_own_tenant_only() {
    let db = TestDatabase::create().await.unwrap();
    let digits = ids::EventId::new().to_string()[4..14].to_owned();
    let (acme_source, globex_source) = (format!("alerts-a-{digits}"), format!("alerts-g-{digits}"));
    let rules = json!([
        {"name": "acme-orders", "source": acme_source, "event": "order", "tenant": "acme",
         "actions": ["publish"]},
        {"name": "acme-agent", "source": acme_source, "label": "urgent", "actions": ["agent_run"],
         "prompt": "Look at {source} {{now}}"},
        {"name": "globex-issues", "source": "github", "event": "issues", "action": "labeled",
         "repository": "globex/*", "tenant": "globex", "actions": ["publish"]},
        {"name": "operator-agent", "source": "github", "actions": ["agent_run"],
         "prompt": "Triage {repository}"},
        {"name": "globex-on-acme", "source": acme_source, "tenant": "globex",
         "actions": ["publish"]}
    ]);
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_gateway()
        .setting(
            Service::WebhookIngest,
            "WEBHOOK_FAILURE_ALERT_THRESHOLD",
            "3",
        )
        .setting(Service::WebhookIngest, "ROUTING_RULES", rules.to_string())
        // Agent runs are configured but never started: no event matches them here.
        .setting(
            Service::WebhookIngest,
            "CODEGEN_API_URL",
            "http://127.0.0.1:9",
        )
        .setting(Service::WebhookIngest, "CODEGEN_ORG_ID", "1")
        .setting(
            Service::WebhookIngest,
            "CODEGEN_TOKEN",
            "cg-unused-token-0123456789",
        )
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::Gateway);
    let ingest = stack.http_url(Service::WebhookIngest);
    let acme = sign_in(
        &base,
        &stack
            .api_key("acme", &[Scope::Admin, Scope::Webhooks])
            .await,
    )
    .await;
    // Every scope: admin does not open the operator's receivers or another tenant's paths.
    let globex = sign_in(&base, &stack.api_key("globex", &Scope::ALL).await).await;
    for (session, name) in [(&acme, &acme_source), (&globex, &globex_source)] {
        let (status, made) = v1(
            &base,
            reqwest::Method::POST,
            "/v1/inbound/sources",
            session,
            Some(&session.csrf),
            Some(json!({ "name": name })),
        )
        .await;
        assert_eq!(status, 201, "{made}");
    }

    // Before any failure: the clear empty state.
    let (status, overview) = page(&base, "/console", &acme.cookie).await;
    assert_eq!(status, 200);
    assert!(
        overview.contains("No alerts in the last hour."),
        "{overview}"
    );
    assert!(
        overview.contains(r#"<dd id="stat-alerts">0</dd>"#),
        "{overview}"
    );

    // Acme's path fails past the threshold of 3; so does the operator's GitHub receiver.
    let acme_path = format!("/api/v1/webhooks/{acme_source}");
    fail(&ingest, &acme_path, 4).await;
    fail(&ingest, "/api/v1/webhooks/github", 3).await;
    // Globex's path fails too, below the threshold: no alert.
    fail(&ingest, &format!("/api/v1/webhooks/{globex_source}"), 2).await;

    let alerts = eventually(Duration::from_secs(10), "acme's alert", || {
        let (base, acme) = (base.clone(), &acme);
        async move {
            let (status, alerts) = v1(
                &base,
                reqwest::Method::GET,
                "/v1/inbound/webhook-alerts",
                acme,
                Some(&acme.csrf),
                None,
            )
            .await;
            assert_eq!(status, 200, "{alerts}");
            (alerts["data"][0]["failures_last_hour"] == 4).then_some(alerts)
        }
    })
    .await;
    assert_eq!(alerts["monitoring"], "enabled");
    assert_eq!(alerts["failure_threshold"], 3);
    let listed = alerts["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "only acme's own path: {alerts}");
    assert_eq!(listed[0]["path"], acme_path.as_str());
    assert_eq!(listed[0]["source"], acme_source.as_str());
    let raised: chrono::DateTime<chrono::Utc> =
        listed[0]["raised_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (chrono::Utc::now() - raised).num_seconds().abs() < 60,
        "{raised}"
    );

    let (status, overview) = page(&base, "/console", &acme.cookie).await;
    assert_eq!(status, 200);
    let table = overview
        .split(r#"<table id="webhook-alerts""#)
        .nth(1)
        .expect("the overview lists the alert")
        .split("</table>")
        .next()
        .unwrap();
    assert!(table.contains(&acme_path), "{table}");
    assert!(table.contains(r#"<td class="failures">4</td>"#), "{table}");
    assert!(!table.contains("github"), "{table}");
    assert!(
        overview.contains(r#"<dd id="stat-alerts">1</dd>"#),
        "{overview}"
    );

    // Globex, with every scope, sees neither acme's alert nor the operator's receiver's.
    let (status, theirs) = v1(
        &base,
        reqwest::Method::GET,
        "/v1/inbound/webhook-alerts",
        &globex,
        Some(&globex.csrf),
        None,
    )
    .await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["data"], json!([]), "{theirs}");
    let (_, overview) = page(&base, "/console", &globex.cookie).await;
    assert!(
        overview.contains("No alerts in the last hour."),
        "{overview}"
    );
    assert!(
        !overview.contains(&acme_source) && !overview.contains("/api/v1/webhooks/github"),
        "{overview}"
    );
    // The operator's own status page has both, as before.
    let (_, status_body) = test_support::get_json(&format!("{ingest}/webhook-status"))
        .await
        .unwrap();
    assert_eq!(status_body["paths"][&acme_path]["status"], "alert");
    assert_eq!(
        status_body["paths"]["/api/v1/webhooks/github"]["status"],
        "alert"
    );

    // Routing rules: each tenant sees the rules that concern it, read-only.
    let names = |rules: &Value| -> Vec<String> {
        rules["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, acme_rules) = v1(
        &base,
        reqwest::Method::GET,
        "/v1/inbound/routing-rules",
        &acme,
        Some(&acme.csrf),
        None,
    )
    .await;
    assert_eq!(status, 200, "{acme_rules}");
    assert_eq!(names(&acme_rules), ["acme-orders", "acme-agent"]);
    assert_eq!(
        acme_rules["data"][1],
        json!({"name": "acme-agent", "source": acme_source, "label": "urgent",
               "actions": ["agent_run"], "prompt": "Look at {source} {{now}}"})
    );
    let (_, globex_rules) = v1(
        &base,
        reqwest::Method::GET,
        "/v1/inbound/routing-rules",
        &globex,
        Some(&globex.csrf),
        None,
    )
    .await;
    assert_eq!(names(&globex_rules), ["globex-issues", "globex-on-acme"]);
    assert_eq!(globex_rules["data"][0]["repository"], "globex/*");
    let (status, inbound_page) = page(&base, "/console/inbound", &acme.cookie).await;
    assert_eq!(status, 200);
    let table = inbound_page
        .split(r#"<table id="routing-rules">"#)
        .nth(1)
        .expect("the inbound page lists the rules")
        .split("</table>")
        .next()
        .unwrap();
    assert!(
        table.contains("acme-orders") && table.contains("<code>order.*</code>"),
        "{table}"
    );
    assert!(
        table.contains("label urgent") && table.contains("start an agent run"),
        "{table}"
    );
    for hidden in [
        "globex-issues",
        "operator-agent",
        "globex-on-acme",
        "Triage",
    ] {
        assert!(!inbound_page.contains(hidden), "{hidden}: {inbound_page}");
    }

    // Without the admin scope the inbound routes are closed, and the overview says so instead
    // of failing.
    let webhooks_only = sign_in(&base, &stack.api_key("acme", &[Scope::Webhooks]).await).await;
    for path in ["/v1/inbound/webhook-alerts", "/v1/inbound/routing-rules"] {
        let (status, refused) = v1(
            &base,
            reqwest::Method::GET,
            path,
            &webhooks_only,
            Some(&webhooks_only.csrf),
            None,
        )
        .await;
        assert_eq!(status, 403, "{path}: {refused}");
    }
    let (status, overview) = page(&base, "/console", &webhooks_only.cookie).await;
    assert_eq!(status, 200);
    assert!(
        overview.contains(r#"<dd id="stat-alerts">—</dd>"#) && !overview.contains(&acme_path),
        "{overview}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_renders_while_webhook_ingest_has_no_redis() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_gateway()
        // Nothing listens there: webhook-ingest runs without Redis (a degradation).
        .setting(Service::WebhookIngest, "REDIS_URL", "redis://127.0.0.1:9/0")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let session = sign_in(&base, &stack.api_key("acme", &Scope::ALL).await).await;
    // A tenant without sources has no alerts whatever Redis says; with one, they must be read.
    let (status, made) = v1(
        &base,
        reqwest::Method::POST,
        "/v1/inbound/sources",
        &session,
        Some(&session.csrf),
        Some(json!({ "name": format!("no-redis-{}", &ids::EventId::new().to_string()[4..14]) })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let (status, alerts) = v1(
        &base,
        reqwest::Method::GET,
        "/v1/inbound/webhook-alerts",
        &session,
        Some(&session.csrf),
        None,
    )
    .await;
    assert_eq!(status, 503, "{alerts}");
    assert_eq!(alerts["status"], 503);
    let started = std::time::Instant::now();
    let (status, overview) = page(&base, "/console", &session.cookie).await;
    assert_eq!(status, 200, "{overview}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        overview.contains(r#"<dd id="stat-alerts">—</dd>"#)
            && overview.contains("Alerts: —")
            && !overview.contains("No alerts in the last hour."),
        "{overview}"
    );
    // The rules need no Redis.
    let (status, page_body) = page(&base, "/console/inbound", &session.cookie).await;
    assert_eq!(status, 200);
    assert!(
        page_body.contains("No routing rule concerns this tenant."),
        "{page_body}"
    );
}

#[tokio::test]
async fn a_key_without_admin_sees_no_keys_and_a_disabled_console_is_absent() {
    let gateway = plain().await;
    let base = &gateway.base;
    let key = gateway.stack.api_key("acme", &[Scope::Tts]).await;
    let session = sign_in(base, &key).await;
    let (_, overview) = page(base, "/console", &session.cookie).await;
    assert!(!overview.contains("/console/keys"), "no admin link");
    assert!(overview.contains("/console/playground"));
    let (status, keys) = page(base, "/console/keys", &session.cookie).await;
    assert_eq!(status, 200);
    assert!(keys.contains("does not have the admin scope"), "{keys}");
    assert!(!keys.contains("test key"), "{keys}");

    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_gateway()
        .setting(Service::Gateway, "CONSOLE_ENABLED", "false")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let (status, _) = page(&base, "/console/sign-in", "").await;
    assert_eq!(status, 404);
    let response = client()
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", gateway.key.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

// --- The browser -------------------------------------------------------------------------------

/// Where the screenshots go: `$CARGO_TARGET_DIR/console-screenshots`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    target.join("console-screenshots")
}

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
    _profile: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A fresh directory, removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), uuid_like()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    fn uuid_like() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Starts chromedriver, or `None` when Chromium is not installed outside CI (in CI its absence
/// fails the test: `scripts/test` installs it).
async fn start_driver() -> Option<(Driver, PathBuf)> {
    let driver = find_program(&["chromedriver"]);
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        let message = "Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver; scripts/test installs them)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("SKIPPED the console's browser test: {message}");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(&driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver {
        child,
        url: url.clone(),
        _profile: tempfile_dir::Dir::new("sonora-console-chromium"),
    };
    test_support::eventually(
        Duration::from_secs(20),
        "chromedriver to listen",
        || async {
            let status = test_support::http_client()
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()?;
            status.status().is_success().then_some(())
        },
    )
    .await;
    Some((driver, chromium))
}

async fn open_browser(driver: &Driver, chromium: &std::path::Path) -> Browser {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", driver._profile.0.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

struct Shots {
    dir: PathBuf,
    count: usize,
}

impl Shots {
    async fn take(&mut self, browser: &Browser, name: &str) {
        self.count += 1;
        // The whole page: the window is grown to the document's height first.
        let height = browser
            .execute(
                "return Math.min(document.documentElement.scrollHeight, 6000)",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(1000);
        // The window's frame takes some of its height from the page.
        let _ = browser
            .set_window_size(1280, u32::try_from(height + 160).unwrap_or(1000).max(700))
            .await;
        let png = browser.screenshot().await.expect("a screenshot");
        let path = self.dir.join(format!("{:02}-{name}.png", self.count));
        std::fs::write(&path, png).unwrap();
        let _ = browser.set_window_size(1280, 1000).await;
    }
}

/// Clicks the element `locator` finds.
async fn click(browser: &Browser, locator: Locator<'_>) {
    browser.find(locator).await.unwrap().click().await.unwrap();
}

/// Types `text` into the element `locator` finds.
async fn type_into(browser: &Browser, locator: Locator<'_>, text: &str) {
    browser
        .find(locator)
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// The duration the audio element `id` reports once it has loaded, polled every 250 ms up to
/// `tries` times; 0 if it never does.
async fn audio_duration(browser: &Browser, id: &str, tries: usize) -> f64 {
    let script = format!(
        "const a = document.getElementById('{id}'); return Number.isFinite(a.duration) ? a.duration : 0;"
    );
    for _ in 0..tries {
        let duration = browser
            .execute(&script, vec![])
            .await
            .unwrap()
            .as_f64()
            .unwrap_or(0.0);
        if duration > 0.0 {
            return duration;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    0.0
}

async fn wait_for(browser: &Browser, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("waiting for {css}: {e}"))
}

/// Reloads the page until `css` matches something (deliveries arrive in the background).
async fn reload_until(browser: &Browser, css: &str, what: &str) {
    for _ in 0..60 {
        browser.refresh().await.unwrap();
        if browser.find(Locator::Css(css)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "{what}: {css} never appeared; page:\n{}",
        browser.source().await.unwrap_or_default()
    );
}

async fn browser_sign_in(browser: &Browser, base: &str, key: &str) {
    browser
        .goto(&format!("{base}/console/sign-in"))
        .await
        .unwrap();
    type_into(browser, Locator::Id("key"), key).await;
    click(browser, Locator::Id("sign-in")).await;
    wait_for(browser, "#tenant").await;
}

#[tokio::test]
async fn the_console_in_a_browser() {
    let Some((driver, chromium)) = start_driver().await else {
        return;
    };
    // The Replicate simulator finishes audio jobs; one prediction a minute keeps a second job
    // `queued` long enough to be canceled from the page.
    let simulator = Simulator::start(&[]);
    let gateway = browser_stack(&simulator).await;
    let base = gateway.base.clone();
    let browser = open_browser(&driver, &chromium).await;
    let dir = screenshot_dir();
    // Only this run's pictures.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("console screenshots: {}", dir.display());
    let mut shots = Shots { dir, count: 0 };
    // The browser is closed whatever happens, so no Chromium outlives the test.
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run_in_browser(
        &browser, &gateway, &base, &mut shots,
    )))
    .await;
    if outcome.is_err() {
        // What the browser showed when the test failed.
        shots.take(&browser, "failure").await;
        eprintln!(
            "the page at the failure ({}):\n{}",
            browser
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            browser.source().await.unwrap_or_default()
        );
    }
    let _ = browser.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Every service, with audio-generation and webhook-ingest pointed at `simulator`.
async fn browser_stack(simulator: &Simulator) -> Gateway {
    let db = TestDatabase::create().await.unwrap();
    let stack = crate::audio_stack(&db, simulator)
        .with_all()
        .setting(Service::AudioGeneration, "REPLICATE_SUBMIT_BUDGET", "1")
        .setting(
            Service::WebhookIngest,
            "ROUTING_RULES",
            json!([{"name": "crm-to-partners", "source": "partner-crm", "event": "contact",
                    "tenant": "acme", "actions": ["publish"]}])
            .to_string(),
        )
        .start()
        .await;
    Gateway {
        key: stack.api_key("acme", &Scope::ALL).await,
        base: stack.http_url(Service::Gateway),
        ops: stack.ops_url(Service::Gateway),
        stack,
    }
}

/// A `/v1` call with an API key: status and body.
async fn with_key(
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = test_support::http_client()
        .request(method, format!("{base}{path}"))
        .header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// A sound effect, made through the API; its id.
async fn sound_effect(base: &str, key: &str, prompt: &str) -> String {
    let (status, job) = with_key(
        base,
        reqwest::Method::POST,
        "/v1/sound-effects",
        key,
        Some(json!({"prompt": prompt, "duration_seconds": 1.5})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

async fn job_status(base: &str, key: &str, id: &str) -> String {
    let (_, job) = with_key(
        base,
        reqwest::Method::GET,
        &format!("/v1/audio-jobs/{id}"),
        key,
        None,
    )
    .await;
    job["status"].as_str().unwrap_or_default().to_owned()
}

/// Audio jobs in the browser: a finished job's audio plays, a queued one is canceled.
async fn audio_jobs_in_browser(
    browser: &Browser,
    gateway: &Gateway,
    base: &str,
    shots: &mut Shots,
) {
    use chrono::Timelike as _;
    // The first job takes this minute's one prediction, so the second waits for the next
    // minute: start early enough in a minute that the page is done before it turns.
    let second = chrono::Utc::now().second();
    if second > 35 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
    let key = &gateway.key;
    let finished = sound_effect(base, key, "a door creaks").await;
    eventually(
        Duration::from_secs(20),
        "the first job to succeed",
        || async { (job_status(base, key, &finished).await == "succeeded").then_some(()) },
    )
    .await;
    let pending = sound_effect(base, key, "rain on a tin roof").await;
    assert_eq!(job_status(base, key, &pending).await, "queued");

    browser
        .goto(&format!("{base}/console/audio"))
        .await
        .unwrap();
    let done = format!("article.job[data-job='{finished}'][data-status=succeeded]");
    wait_for(browser, &done).await;
    // The timeline follows the job to its event's partner deliveries.
    let timeline = text_of(browser, &format!("{done} ol.timeline")).await;
    for step in [
        "Created",
        "Submitted to the model",
        "The model's answer received",
        "Audio stored",
    ] {
        assert!(
            timeline.contains(step),
            "{step} in the timeline: {timeline}"
        );
    }
    let event = text_of(browser, &format!("{done} li.event")).await;
    assert!(
        event.starts_with("Event evt_")
            && (event.contains("delivered to") || event.contains("no partner delivery")),
        "the event's deliveries, asked of delivery-worker: {event}"
    );
    assert!(
        browser
            .find(Locator::Css(&format!("{done} button[data-method=DELETE]")))
            .await
            .is_err(),
        "a finished job cannot be canceled"
    );
    click(browser, Locator::Css(&format!("{done} button[data-play]"))).await;
    let duration = audio_duration(browser, "job-audio", 80).await;
    assert!(
        duration > 1.0 && duration < 2.5,
        "the job's audio plays, trimmed to the 1.5 s asked for: {duration}"
    );
    shots.take(browser, "audio-playing").await;

    let queued = format!("article.job[data-job='{pending}'][data-status=queued]");
    click(
        browser,
        Locator::Css(&format!("{queued} button[data-method=DELETE]")),
    )
    .await;
    wait_for(
        browser,
        &format!("article.job[data-job='{pending}'][data-status=canceled]"),
    )
    .await;
    assert_eq!(job_status(base, key, &pending).await, "canceled");
    assert!(
        browser
            .find(Locator::Css(&format!(
                "article.job[data-job='{pending}'] button"
            )))
            .await
            .is_err(),
        "a canceled job has nothing to play or cancel"
    );
    shots.take(browser, "audio-canceled").await;
}

async fn run_in_browser(browser: &Browser, gateway: &Gateway, base: &str, shots: &mut Shots) {
    // Sign in.
    browser
        .goto(&format!("{base}/console/sign-in"))
        .await
        .unwrap();
    shots.take(browser, "sign-in").await;
    browser_sign_in(browser, base, &gateway.key).await;
    assert_eq!(text_of(browser, "main h1").await, "Overview");
    assert_eq!(text_of(browser, "#tenant").await, "acme");
    shots.take(browser, "overview").await;

    // Create a key: shown once.
    browser.goto(&format!("{base}/console/keys")).await.unwrap();
    type_into(browser, Locator::Id("key-name"), "made in the browser").await;
    click(browser, Locator::Css("#create-key button[type=submit]")).await;
    let created = wait_for(browser, "#created-key code")
        .await
        .text()
        .await
        .unwrap();
    assert!(created.starts_with("cw_live_"), "{created}");
    shots.take(browser, "keys-created").await;
    let listed: Value = test_support::http_client()
        .get(format!("{base}/v1/auth/verify"))
        .header("x-api-key", &created)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tenant"], "acme", "the new key works: {listed}");

    // The playground speaks: the audio element gets audio with a duration.
    browser
        .goto(&format!("{base}/console/playground"))
        .await
        .unwrap();
    let voice = browser
        .execute("return document.getElementById('pg-voice').value", vec![])
        .await
        .unwrap();
    assert_eq!(voice, "en_US-joe-medium", "the default voice is chosen");
    assert!(
        text_of(browser, "#voices")
            .await
            .contains("en_US-joe-medium"),
        "the catalogue lists the voice"
    );
    click(browser, Locator::Id("pg-speak")).await;
    let duration = audio_duration(browser, "pg-audio", 120).await;
    let status = text_of(browser, "#pg-status").await;
    assert!(
        duration > 0.0,
        "the audio element has a duration; status: {status}"
    );
    let ttfa = text_of(browser, "#pg-ttfa").await;
    assert!(ttfa.ends_with(" ms"), "time to first audio: {ttfa}");
    let words = browser
        .find_all(Locator::Css("#pg-words span"))
        .await
        .unwrap();
    assert!(words.len() >= 5, "word timings shown: {}", words.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    click(browser, Locator::Id("pg-copy-curl")).await;
    let curl = text_of(browser, "#pg-curl").await;
    assert!(
        curl.contains("/v1/tts") && curl.contains("Hello from Sonora"),
        "{curl}"
    );
    shots.take(browser, "playground").await;

    // A partner endpoint at a loopback receiver.
    let receiver = Receiver::start().await;
    browser
        .goto(&format!("{base}/console/endpoints"))
        .await
        .unwrap();
    type_into(browser, Locator::Id("url"), &receiver.url("/hook")).await;
    type_into(
        browser,
        Locator::Id("description"),
        "Receiver <b>in the test</b>",
    )
    .await;
    click(
        browser,
        Locator::Css("#create-endpoint button[type=submit]"),
    )
    .await;
    wait_for(browser, "#endpoint-url").await;
    assert_eq!(
        text_of(browser, "#endpoint-url").await,
        receiver.url("/hook")
    );
    assert_eq!(
        text_of(browser, "#endpoint-description").await,
        "Receiver <b>in the test</b>"
    );
    let endpoint_page = browser.current_url().await.unwrap().to_string();

    // Reveal the secret and give it to the receiver, which refuses unsigned webhooks.
    click(browser, Locator::Id("reveal-secret")).await;
    let secret = wait_for(browser, "#secret-value code")
        .await
        .text()
        .await
        .unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.trust("/hook", &secret);

    // A test event, its delivery and attempt.
    click(browser, Locator::Id("send-test")).await;
    wait_for(browser, "#flash:not([hidden])").await;
    reload_until(
        browser,
        "li.delivery[data-status=delivered] details.attempt",
        "the test event delivered",
    )
    .await;
    let summary = text_of(
        browser,
        "li.delivery[data-status=delivered] details.attempt summary",
    )
    .await;
    assert!(summary.contains("HTTP 200"), "{summary}");
    click(
        browser,
        Locator::Css("li.delivery[data-status=delivered] details.attempt summary"),
    )
    .await;
    let headers = text_of(browser, "li.delivery[data-status=delivered] table.headers").await;
    assert!(headers.contains("webhook-id"), "{headers}");
    assert!(receiver.received_on("/hook").iter().any(|r| r.verified));
    shots.take(browser, "endpoint-delivered").await;

    // The receiver fails: the failure shows, and is retried once it recovers.
    receiver.set("/hook", Behavior::status(503));
    click(browser, Locator::Id("send-test")).await;
    reload_until(
        browser,
        "li.delivery:not([data-status=delivered]) details.attempt",
        "the failed attempt",
    )
    .await;
    let failed = text_of(
        browser,
        "li.delivery:not([data-status=delivered]) details.attempt summary",
    )
    .await;
    assert!(failed.contains("HTTP 503"), "{failed}");
    shots.take(browser, "endpoint-failing").await;
    receiver.set("/hook", Behavior::status(200));
    click(
        browser,
        Locator::Css("li.delivery:not([data-status=delivered]) button.retry"),
    )
    .await;
    reload_until(
        browser,
        "#delivery-list:not(:has(li.delivery:not([data-status=delivered])))",
        "every delivery delivered after the retry",
    )
    .await;
    assert_eq!(
        browser
            .find_all(Locator::Css("li.delivery[data-status=delivered]"))
            .await
            .unwrap()
            .len(),
        2
    );
    shots.take(browser, "endpoint-retried").await;

    // An inbound source: its secret is shown once.
    browser
        .goto(&format!("{base}/console/inbound"))
        .await
        .unwrap();
    wait_for(browser, "#no-sources").await;
    type_into(browser, Locator::Id("source-name"), "partner-crm").await;
    click(browser, Locator::Css("#create-source button[type=submit]")).await;
    let source_secret = wait_for(browser, "#source-secret code")
        .await
        .text()
        .await
        .unwrap();
    assert!(source_secret.starts_with("whsec_"), "{source_secret}");
    shots.take(browser, "inbound-source-created").await;
    browser.refresh().await.unwrap();
    assert!(
        text_of(browser, "main")
            .await
            .contains("/api/v1/webhooks/partner-crm")
    );
    // The operator's routing rule for it, read-only.
    let rules = text_of(browser, "#routing-rules").await;
    assert!(
        rules.contains("crm-to-partners") && rules.contains("contact.*"),
        "{rules}"
    );

    // A source whose sender keeps failing: the overview shows its WEBHOOK ALERT. (Its name is
    // fresh each run: failures are counted for an hour in the shared Redis.)
    let failing = format!("crm-{}", &ids::EventId::new().to_string()[4..14]);
    let (status, made) = with_key(
        base,
        reqwest::Method::POST,
        "/v1/inbound/sources",
        &gateway.key,
        Some(json!({ "name": failing })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    fail(
        &gateway.stack.http_url(Service::WebhookIngest),
        &format!("/api/v1/webhooks/{failing}"),
        5,
    )
    .await;
    browser.goto(&format!("{base}/console")).await.unwrap();
    reload_until(browser, "#webhook-alerts", "the webhook alert").await;
    let alerts = text_of(browser, "#webhook-alerts").await;
    assert!(
        alerts.contains(&format!("/api/v1/webhooks/{failing}")),
        "{alerts}"
    );
    assert_eq!(text_of(browser, "#webhook-alerts td.failures").await, "5");
    shots.take(browser, "overview-alert").await;

    audio_jobs_in_browser(browser, gateway, base, shots).await;

    // The other pages.
    for (path, name) in [
        ("/console", "overview-after"),
        ("/console/endpoints", "endpoints"),
        ("/console/audio", "audio-jobs"),
        ("/console/inbound", "inbound"),
        ("/console/keys", "keys"),
    ] {
        browser.goto(&format!("{base}{path}")).await.unwrap();
        wait_for(browser, "main h1").await;
        shots.take(browser, name).await;
    }

    // Sign out: the pages are closed again.
    click(browser, Locator::Id("sign-out")).await;
    wait_for(browser, "#sign-in").await;
    browser
        .goto(&format!("{base}/console/endpoints"))
        .await
        .unwrap();
    wait_for(browser, "#sign-in").await;

    // Another tenant sees none of it.
    let other = gateway.stack.api_key("globex", &Scope::ALL).await;
    browser_sign_in(browser, base, &other).await;
    assert_eq!(text_of(browser, "#tenant").await, "globex");
    browser
        .goto(&format!("{base}/console/endpoints"))
        .await
        .unwrap();
    wait_for(browser, "#no-endpoints").await;
    assert!(!browser.source().await.unwrap().contains("/hook"));
    browser.goto(&format!("{base}/console")).await.unwrap();
    wait_for(browser, "#no-alerts").await;
    assert!(!browser.source().await.unwrap().contains(&failing));
    browser
        .goto(&format!("{base}/console/inbound"))
        .await
        .unwrap();
    wait_for(browser, "#no-rules").await;
    browser
        .goto(&format!("{base}/console/audio"))
        .await
        .unwrap();
    wait_for(browser, "main h1").await;
    assert!(browser.find(Locator::Css("article.job")).await.is_err());
    browser.goto(&endpoint_page).await.unwrap();
    wait_for(browser, "main p.error").await;
    assert!(!browser.source().await.unwrap().contains("/hook"));
    shots.take(browser, "other-tenant").await;
}
