//! GitHub's webhooks: verified with X-Hub-Signature-256, stored before the 200, once per hook and
//! delivery, JSON or form-encoded.

use ring::hmac;
use test_stack::{Service, Stack};
use test_support::{TestDatabase, http_client};

const SECRET: &str = "development-github-secret-for-tests";

struct Github {
    base: String,
    db: TestDatabase,
    _stack: Stack,
}

async fn start() -> Github {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(Service::WebhookIngest, "GITHUB_WEBHOOK_SECRET", SECRET)
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    Github {
        base: stack.http_url(Service::WebhookIngest),
        db,
        _stack: stack,
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Github {
    async fn post(
        &self,
        event: &str,
        hook: &str,
        delivery: &str,
        content_type: &str,
        body: &str,
        signature: &str,
    ) -> (u16, serde_json::Value) {
        let response = http_client()
            .post(format!("{}/api/v1/webhooks/github", self.base))
            .header("content-type", content_type)
            .header("user-agent", "GitHub-Hookshot/abc123")
            .header("x-github-event", event)
            .header("x-github-hook-id", hook)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    async fn post_json(
        &self,
        event: &str,
        hook: &str,
        delivery: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        self.post(
            event,
            hook,
            delivery,
            "application/json",
            body,
            &sign(SECRET, body.as_bytes()),
        )
        .await
    }

    fn inbox(&self, sql: &str) -> Vec<String> {
        let run = test_support::run_binary("/usr/bin/psql", &[&self.db.url, "-tAc", sql], &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run.stdout.lines().map(str::to_owned).collect()
    }
}

const LABELED: &str = r#"{"action":"labeled","issue":{"number":7,"title":"Sound is too quiet"},"label":{"name":"agent"},"repository":{"full_name":"acme/narrator"},"sender":{"login":"octocat"}}"#;

#[tokio::test]
async fn deliveries_are_stored_once_per_hook_and_delivery() {
    let g = start().await;
    let ping = r#"{"zen":"Keep it logically awesome.","hook_id":42,"hook":{"type":"Repository"}}"#;
    let (status, body) = g.post_json("ping", "42", "d-ping", ping).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );

    // Form-encoded, as a hook configured for it sends it.
    let form = format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(LABELED.as_bytes()).collect::<String>()
    );
    let (status, body) = g
        .post(
            "issues",
            "42",
            "d-1",
            "application/x-www-form-urlencoded",
            &form,
            &sign(SECRET, form.as_bytes()),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    // A redelivery keeps its delivery id: stored once.
    let (status, body) = g.post_json("issues", "42", "d-1", LABELED).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    // Another hook's delivery of the same event is its own.
    let (status, body) = g.post_json("issues", "43", "d-1", LABELED).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );

    // No routing rule is configured: nothing to do, so the dispatcher settles them as done.
    test_support::eventually(std::time::Duration::from_secs(10), "the events settled", || async {
        (g.inbox("select state || ' ' || event_type || ' ' || delivery_id from ingest.inbox where source = 'github' order by received_at")
            == ["done ping 42:d-ping", "done issues.labeled 42:d-1", "done issues.labeled 43:d-1"])
            .then_some(())
    })
    .await;
    assert_eq!(
        g.inbox("select payload from ingest.inbox where delivery_id = '42:d-1'"),
        [LABELED],
        "the JSON of a form-encoded body is what is kept"
    );
}

#[tokio::test]
async fn forged_incomplete_and_malformed_deliveries_are_refused() {
    let g = start().await;
    let (status, problem) = g
        .post(
            "issues",
            "42",
            "d-2",
            "application/json",
            LABELED,
            &sign("another secret entirely", LABELED.as_bytes()),
        )
        .await;
    assert_eq!(status, 401);
    assert!(problem.get("detail").is_none());
    let (status, _) = g
        .post("issues", "42", "d-2", "application/json", LABELED, "")
        .await;
    assert_eq!(status, 401);
    let (status, problem) = g.post_json("issues", "42", "", LABELED).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("X-GitHub-Delivery")
    );
    assert_eq!(g.inbox("select count(*) from ingest.inbox"), ["0"]);

    let (status, problem) = g
        .post_json("issues", "42", "d-3", "[\"not an event\"]")
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        g.inbox("select state from ingest.inbox"),
        ["malformed"],
        "kept for inspection"
    );
}

#[tokio::test]
async fn each_client_address_is_limited_and_told_when_to_retry() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(Service::WebhookIngest, "GITHUB_WEBHOOK_SECRET", SECRET)
        .setting(Service::WebhookIngest, "WEBHOOK_RATE_LIMIT_PER_IP", "3")
        // The test's loopback connection plays the Ingress.
        .setting(Service::WebhookIngest, "TRUSTED_PROXIES", "127.0.0.1/32")
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::WebhookIngest);
    // Addresses of this test alone: the shared Redis counts per address.
    let unique = uuid::Uuid::new_v4().as_u128();
    let client = |n: u128| std::net::Ipv6Addr::from(unique ^ n).to_string();
    let send = |from: String, delivery: &'static str| {
        let base = base.clone();
        async move {
            http_client()
                .post(format!("{base}/api/v1/webhooks/github"))
                .header("content-type", "application/json")
                .header("x-forwarded-for", from)
                .header("x-github-event", "issues")
                .header("x-github-hook-id", "7")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", sign(SECRET, LABELED.as_bytes()))
                .body(LABELED)
                .send()
                .await
                .unwrap()
        }
    };
    // The window is a minute: do not start in its last seconds, or the requests would straddle two.
    let second = chrono::Utc::now().timestamp() % 60;
    if second >= 55 {
        tokio::time::sleep(std::time::Duration::from_secs(
            u64::try_from(61 - second).unwrap(),
        ))
        .await;
    }
    for delivery in ["r-1", "r-2", "r-3"] {
        assert_eq!(send(client(1), delivery).await.status().as_u16(), 200);
    }
    let refused = send(client(1), "r-4").await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another client is not affected.
    assert_eq!(send(client(2), "r-5").await.status().as_u16(), 200);
}
