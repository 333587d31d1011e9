//! Rate limits per key and per client address (429 with `Retry-After` and the `RateLimit`
//! headers), the monthly character quota, limits kept locally while Redis is away, tokens made
//! from keys, and usage metering.

use std::time::Duration;

use internal_rpc::Scope;
use test_stack::{Service, Stack};
use test_support::{TestDatabase, host_port, proxy::TcpProxy, redis_url};

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: serde_json::Value,
}

async fn send(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Answer {
    let mut request = test_support::http_client().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or_default(),
    }
}

async fn get(url: &str, key: &str) -> Answer {
    send(reqwest::Method::GET, url, &[("x-api-key", key)], None).await
}

/// A new key of the admin's tenant on `plan`, made through the admin API.
async fn key_on_plan(base: &str, admin: &str, plan: &str, scopes: &[&str]) -> String {
    let made = send(
        reqwest::Method::POST,
        &format!("{base}/v1/admin/api-keys"),
        &[("x-api-key", admin)],
        Some(serde_json::json!({ "name": format!("{plan} key"), "scopes": scopes, "plan": plan })),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    made.body["key"].as_str().unwrap().to_owned()
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

async fn metrics(ops: &str) -> String {
    test_support::http_client()
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_past_its_rate_gets_429_with_retry_after_and_the_ratelimit_headers() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_gateway()
        .setting(Service::Gateway, "RATE_LIMIT_FREE", "1/m,burst=3")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let admin = stack.api_key("acme", &[Scope::Admin]).await;
    let free = key_on_plan(&base, &admin, "free", &["usage"]).await;
    let url = format!("{base}/v1/auth/verify");

    for remaining in [2, 1, 0] {
        let answer = get(&url, &free).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let state = header(&answer, "ratelimit");
        assert!(
            state.starts_with(&format!("\"key\";r={remaining};t=")),
            "{state}"
        );
        assert!(
            header(&answer, "ratelimit-policy").starts_with("\"key\";q=3;w=180"),
            "{}",
            header(&answer, "ratelimit-policy")
        );
    }
    let refused = get(&url, &free).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["type"], "/problems/rate-limited");
    assert_eq!(refused.body["limit"], "key");
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(header(&refused, "ratelimit").starts_with("\"key\";r=0;"));
    // Another key of the same tenant has its own budget.
    assert_eq!(get(&url, &admin).await.status, 200);
    let text = metrics(&stack.ops_url(Service::Gateway)).await;
    assert!(
        text.contains(r#"api_key_rate_limit_exceeded_total{limit="key"} 1"#),
        "{text}"
    );
    // The limiter lives in Redis under rl:, as the old system's operators expect.
    let pool = redis_pool::connect(&redis_pool::RedisConfig {
        url: redis_url(),
        pool_size: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let mut conn = redis_pool::get(&pool).await.unwrap();
    let me = get(&url, &admin).await.body;
    let exists: i64 = redis_pool::redis::cmd("EXISTS")
        .arg(format!("rl:key:{}", me["id"].as_str().unwrap()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1);
}

#[tokio::test]
async fn client_addresses_are_limited_and_forwarded_ones_believed_only_from_trusted_proxies() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_gateway()
        .setting(Service::Gateway, "RATE_LIMIT_PER_IP", "1/m,burst=2")
        .setting(Service::Gateway, "TRUSTED_PROXIES", "127.0.0.1/32")
        .start()
        .await;
    let url = format!("{}/v1/auth/verify", stack.http_url(Service::Gateway));
    // Addresses no other test uses, so the shared Redis holds no budget of theirs.
    let client = format!("2001:db8::{:x}", std::process::id());
    let other = format!("2001:db8:1::{:x}", std::process::id());
    let from = |ip: &str| vec![("x-forwarded-for", format!("{ip}, 127.0.0.1"))];
    for _ in 0..2 {
        let headers = from(&client);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        // Without a key: 401, yet counted against the address.
        let answer = send(reqwest::Method::GET, &url, &pairs, None).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert!(header(&answer, "ratelimit").starts_with("\"ip\";r="));
    }
    let headers = from(&client);
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let refused = send(reqwest::Method::GET, &url, &pairs, None).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["limit"], "ip");
    assert!(refused.headers.contains_key("retry-after"));
    // Another client behind the same proxy has its own budget.
    let headers = from(&other);
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(
        send(reqwest::Method::GET, &url, &pairs, None).await.status,
        401
    );
}

/// The month's counter of a key in Redis.
fn quota_counter(key_id: &str) -> String {
    format!("rl:quota:{key_id}:{}", chrono::Utc::now().format("%Y-%m"))
}

#[tokio::test]
async fn the_monthly_character_quota_refuses_with_when_it_resets_and_survives_redis_losing_it() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_tts()
        .with_gateway()
        .setting(Service::Gateway, "QUOTA_FREE_CHARACTERS", "20")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let admin = stack.api_key("acme", &[Scope::Admin]).await;
    let free = key_on_plan(&base, &admin, "free", &["tts", "usage"]).await;
    let speak = |text: &'static str| {
        let (base, free) = (base.clone(), free.clone());
        async move {
            send(
                reqwest::Method::POST,
                &format!("{base}/v1/tts"),
                &[("x-api-key", &free)],
                Some(serde_json::json!({ "text": text, "format": "wav" })),
            )
            .await
        }
    };
    let spoken = speak("Hello there.").await;
    assert_eq!(spoken.status, 200);
    let refused = speak("Hello again.").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["type"], "/problems/quota-exceeded");
    assert_eq!(refused.body["quota_characters"], 20);
    assert_eq!(refused.body["used_characters"], 12);
    let resets = refused.body["resets_at"].as_str().unwrap();
    assert!(resets.ends_with("-01T00:00:00Z"), "{resets}");
    let retry: i64 = header(&refused, "retry-after").parse().unwrap();
    assert!(retry > 0 && retry <= 31 * 86_400, "{retry}");
    // A short text still fits.
    assert_eq!(speak("Yes.").await.status, 200);

    // Redis loses the counter: it is started again from what PostgreSQL recorded.
    let key_id = get(&format!("{base}/v1/auth/verify"), &free).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    test_support::eventually(Duration::from_secs(10), "usage written", || async {
        let usage = get(&format!("{base}/v1/usage"), &free).await;
        (usage.body["quota"]["used_characters"] == 16).then_some(())
    })
    .await;
    let pool = redis_pool::connect(&redis_pool::RedisConfig {
        url: redis_url(),
        pool_size: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let mut conn = redis_pool::get(&pool).await.unwrap();
    let deleted: i64 = redis_pool::redis::cmd("DEL")
        .arg(quota_counter(&key_id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let refused = speak("Hello again.").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["used_characters"], 16);
    let text = metrics(&stack.ops_url(Service::Gateway)).await;
    assert!(
        text.contains(r#"api_key_rate_limit_exceeded_total{limit="quota"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn with_redis_away_requests_are_still_served_and_limited_in_memory_or_refused_when_told() {
    let db = TestDatabase::create().await.unwrap();
    let redis = TcpProxy::start(host_port(&redis_url())).await.unwrap();
    let via_proxy = format!("redis://127.0.0.1:{}/0", redis.port());
    let open = Stack::new(&db)
        .with_gateway()
        .setting(Service::Gateway, "REDIS_URL", &via_proxy)
        .setting(Service::Gateway, "RATE_LIMIT_FREE", "1/m,burst=3")
        .start()
        .await;
    let closed = Stack::new(&db)
        .with_gateway()
        .setting(Service::Gateway, "REDIS_URL", &via_proxy)
        .setting(Service::Gateway, "RATE_LIMIT_FAIL_CLOSED", "true")
        .start()
        .await;
    let base = open.http_url(Service::Gateway);
    let admin = open.api_key("acme", &[Scope::Admin]).await;
    let free = key_on_plan(&base, &admin, "free", &["usage"]).await;
    let verify = format!("{base}/v1/auth/verify");
    assert_eq!(
        get(&verify, &admin).await.status,
        200,
        "looked up and cached"
    );

    redis.cut();
    for _ in 0..3 {
        let answer = get(&verify, &free).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let refused = get(&verify, &free).await;
    assert_eq!(refused.status, 429, "still limited: {}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    let text = metrics(&open.ops_url(Service::Gateway)).await;
    let fallback: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rate_limit_fallback_total "))
        .expect("the fallback is counted")
        .parse()
        .unwrap();
    assert!(fallback >= 4, "{fallback}");

    let refused = get(
        &format!("{}/v1/auth/verify", closed.http_url(Service::Gateway)),
        &admin,
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));

    redis.restore();
    test_support::eventually(Duration::from_secs(10), "Redis used again", || async {
        let answer = get(
            &format!("{}/v1/auth/verify", closed.http_url(Service::Gateway)),
            &admin,
        )
        .await;
        (answer.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_token_made_from_a_key_acts_for_it_until_it_expires_or_the_key_is_revoked() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let admin = stack.api_key("acme", &[Scope::Admin, Scope::Usage]).await;
    let made = send(
        reqwest::Method::POST,
        &format!("{base}/v1/admin/api-keys"),
        &[("x-api-key", &admin)],
        Some(serde_json::json!({ "name": "for tokens", "scopes": ["usage"] })),
    )
    .await;
    let (key, key_id) = (
        made.body["key"].as_str().unwrap().to_owned(),
        made.body["id"].as_str().unwrap().to_owned(),
    );
    let issued = send(
        reqwest::Method::POST,
        &format!("{base}/v1/auth/token"),
        &[("x-api-key", &key)],
        Some(serde_json::json!({ "expires_in": 300 })),
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    assert_eq!(issued.body["token_type"], "Bearer");
    assert_eq!(issued.body["expires_in"], 300);
    let token = issued.body["access_token"].as_str().unwrap().to_owned();
    assert!(!token.contains(&key), "the key is not in the token");
    let bearer = format!("Bearer {token}");
    let me = send(
        reqwest::Method::GET,
        &format!("{base}/v1/auth/verify"),
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["tenant"], "acme");
    assert_eq!(me.body["id"], key_id.as_str());
    assert_eq!(me.body["scopes"], serde_json::json!(["usage"]));

    // A token does not make tokens; lifetimes are bounded; bodies are checked.
    let again = send(
        reqwest::Method::POST,
        &format!("{base}/v1/auth/token"),
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(again.status, 403, "{}", again.body);
    for (body, field) in [
        (serde_json::json!({ "expires_in": 3600 }), "expires_in"),
        (serde_json::json!({ "expires_in": 10 }), "expires_in"),
        (serde_json::json!({ "ttl": 60 }), "ttl"),
        (serde_json::json!([1]), "JSON object"),
    ] {
        let answer = send(
            reqwest::Method::POST,
            &format!("{base}/v1/auth/token"),
            &[("x-api-key", &key)],
            Some(body),
        )
        .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(
            answer.body["detail"].as_str().unwrap().contains(field),
            "{}",
            answer.body
        );
    }
    // A forged token (a changed signature) is refused.
    let forged = format!("Bearer {}x", &token[..token.len() - 1]);
    let answer = send(
        reqwest::Method::GET,
        &format!("{base}/v1/auth/verify"),
        &[("authorization", &forged)],
        None,
    )
    .await;
    assert_eq!(answer.status, 401);

    // Revoking the key ends the token.
    let revoked = send(
        reqwest::Method::DELETE,
        &format!("{base}/v1/admin/api-keys/{key_id}"),
        &[("x-api-key", &admin)],
        None,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let answer = send(
        reqwest::Method::GET,
        &format!("{base}/v1/auth/verify"),
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["detail"], "The API key has been revoked.");
}

#[tokio::test]
async fn usage_is_metered_per_key_and_day_and_seen_by_its_tenant_only() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_tts()
        .with_delivery()
        .with_gateway()
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack
        .api_key("acme", &[Scope::Tts, Scope::Usage, Scope::Webhooks])
        .await;
    // A webhook delivered to the tenant's partner counts as the tenant's.
    let receiver = test_support::receiver::Receiver::start().await;
    let endpoint = send(
        reqwest::Method::POST,
        &format!("{base}/v1/webhook-endpoints"),
        &[("x-api-key", &key)],
        Some(serde_json::json!({ "url": receiver.url("/hook") })),
    )
    .await;
    assert_eq!(endpoint.status, 201, "{}", endpoint.body);
    let endpoint_id = endpoint.body["id"].as_str().unwrap();
    let secret = get(
        &format!("{base}/v1/webhook-endpoints/{endpoint_id}/secret"),
        &key,
    )
    .await;
    receiver.trust("/hook", secret.body["key"].as_str().unwrap());
    let tested = send(
        reqwest::Method::POST,
        &format!(
            "{base}/v1/webhook-endpoints/{}/test",
            endpoint.body["id"].as_str().unwrap()
        ),
        &[("x-api-key", &key)],
        None,
    )
    .await;
    assert_eq!(tested.status, 202, "{}", tested.body);
    let other = stack.api_key("globex", &[Scope::Tts, Scope::Usage]).await;
    let no_usage = stack.api_key("acme", &[Scope::Tts]).await;
    let spoken = send(
        reqwest::Method::POST,
        &format!("{base}/v1/tts"),
        &[("x-api-key", &key)],
        Some(serde_json::json!({ "text": "Counting every word.", "format": "mp3" })),
    )
    .await;
    assert_eq!(spoken.status, 200);
    let body = test_support::eventually(Duration::from_secs(10), "usage written", || async {
        let usage = get(&format!("{base}/v1/usage"), &key).await;
        // Characters are counted when the audio starts, its seconds when the stream ends: each
        // reaches PostgreSQL with the next flush.
        let seconds = usage.body["totals"]["audio_seconds"]
            .as_f64()
            .unwrap_or(0.0);
        (usage.status == 200
            && usage.body["totals"]["characters"] == 20
            && seconds > 0.0
            && usage.body["totals"]["webhooks_delivered"] == 1)
            .then_some(usage.body)
    })
    .await;
    assert_eq!(body["tenant"], "acme");
    let seconds = body["totals"]["audio_seconds"].as_f64().unwrap();
    assert!((0.5..10.0).contains(&seconds), "{body}");
    assert!(body["totals"]["requests"].as_i64().unwrap() >= 1, "{body}");
    let day = &body["days"][0];
    assert_eq!(
        day["day"],
        chrono::Utc::now().format("%Y-%m-%d").to_string()
    );
    assert_eq!(body["quota"]["plan"], "standard");
    assert_eq!(body["quota"]["used_characters"], 20);

    // Another tenant sees none of it.
    let theirs = get(&format!("{base}/v1/usage"), &other).await;
    assert_eq!(theirs.status, 200);
    assert_eq!(theirs.body["tenant"], "globex");
    assert_eq!(theirs.body["totals"]["characters"], 0, "{}", theirs.body);
    assert_eq!(
        theirs.body["totals"]["webhooks_delivered"], 0,
        "{}",
        theirs.body
    );
    assert_eq!(
        body["webhooks"][0]["day"],
        chrono::Utc::now().format("%Y-%m-%d").to_string()
    );
    let filtered = get(
        &format!("{base}/v1/usage?key_id={}", day["key_id"].as_str().unwrap()),
        &other,
    )
    .await;
    assert_eq!(filtered.body["days"], serde_json::json!([]));

    assert_eq!(
        get(&format!("{base}/v1/usage"), &no_usage).await.status,
        403
    );
    for (query, field) in [
        ("from=yesterday", "from"),
        ("from=2026-02-30", "from"),
        ("from=2026-05-02&to=2026-05-01", "to"),
        ("from=2020-01-01&to=2026-01-01", "366"),
        ("key_id=nope", "key_id"),
    ] {
        let answer = get(&format!("{base}/v1/usage?{query}"), &key).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert!(
            answer.body["detail"].as_str().unwrap().contains(field),
            "{query}: {}",
            answer.body
        );
    }
}
