//! Property-based tests of everything the outside world sends the public API: every JSON body
//! (valid ones with fields replaced by arbitrary values, unknown fields added, or arbitrary JSON
//! outright), query strings, byte ranges, API keys and tokens. Whatever arrives, the gateway
//! never answers 5xx, and every refusal is the documented problem body, naming no Rust type and
//! no file path.
//!
//! `PROPTEST_CASES` sets the cases per property (default 32 here, for CI); a longer run on
//! demand: `PROPTEST_CASES=2000 scripts/test -p gateway -E 'test(/properties/)'`.

use std::time::Duration;

use internal_rpc::Scope;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use reqwest::Method;
use serde_json::{Map, Value, json};
use test_stack::{Service, Simulator};
use test_support::{TestDatabase, eventually, http_client};

use crate::without_plan_limits;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Text of every kind: ASCII, any Unicode scalar (controls, bidi, zero-width, astral), and
/// numbers written as text.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z0-9_.:/ -]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
        "\\PC{0,16}",
        Just(String::new()),
        Just("\u{0}".to_owned()),
        Just("\u{202e}\u{200b}\u{feff}".to_owned()),
        (-1e12f64..1e12).prop_map(|n| n.to_string()),
        Just("9".repeat(400)),
    ]
    .boxed()
}

/// Any JSON value, nested a little.
fn value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop_oneof![
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            -10.0f64..10.0,
        ]
        .prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// A valid body with some fields replaced by arbitrary values, some removed, and maybe an
/// unknown one added; or, now and then, arbitrary JSON.
fn body(template: Value) -> impl Strategy<Value = Value> {
    let fields: Vec<String> = template
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let count = fields.len();
    prop_oneof![
        8 => (
            prop::collection::vec((0..count.max(1), value(), any::<bool>()), 0..3),
            prop::option::of((text(), value())),
        )
            .prop_map(move |(changes, extra)| {
                let mut body = template.clone();
                let map = body.as_object_mut().expect("an object");
                for (index, value, remove) in changes {
                    if let Some(field) = fields.get(index) {
                        if remove {
                            map.remove(field);
                        } else {
                            map.insert(field.clone(), value);
                        }
                    }
                }
                if let Some((name, value)) = extra {
                    map.insert(name, value);
                }
                body
            }),
        1 => value(),
    ]
}

/// What any answer must be: not 5xx; a refusal is a problem body whose words are for people
/// (what looks like a Rust path or a file is allowed only when the client sent it, as in an
/// unknown field's name).
async fn check(response: reqwest::Response, what: &str) -> Result<u16, TestCaseError> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    prop_assert!(status < 500, "{what}: {status} {text}");
    if status >= 400 {
        prop_assert_eq!(
            &content_type,
            "application/problem+json",
            "{}: {}",
            what,
            text
        );
        let problem: Value = serde_json::from_str(&text)
            .map_err(|_| TestCaseError::fail(format!("{what}: not JSON: {text}")))?;
        prop_assert_eq!(
            problem["status"].as_u64(),
            Some(u64::from(status)),
            "{}",
            what
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        prop_assert!(!detail.is_empty(), "{what}: no detail: {text}");
        for leak in [
            "::", ".rs:", "/root/", "/work/", "/home/", "src/", "panicked", "Error {", "Some(",
        ] {
            prop_assert!(
                !detail.contains(leak) || what.contains(leak),
                "{what}: the detail shows {leak:?}: {detail}"
            );
        }
    }
    Ok(status)
}

/// Runs `property` on `cases()` inputs of `strategy`, shrinking a failure to its smallest case.
fn run<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(failure) = runner.run(&strategy, property) {
        panic!("{name}: {failure}");
    }
    eprintln!("{name}: {} cases in {:?}", cases(), started.elapsed());
}

/// Runs an async check from the synchronous property runner.
fn block<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_clients_send_is_refused_cleanly_or_served() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_GENERATION_DELAY", "100ms")]);
    let stack = without_plan_limits(crate::audio_stack(&db, &sim).with_tts())
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &Scope::ALL).await;

    // A finished job, for byte ranges, and an endpoint, for the routes that name one.
    let created: Value = http_client()
        .post(format!("{base}/v1/sound-effects"))
        .header("x-api-key", &key)
        .json(&json!({"prompt": "a door creaks", "duration_seconds": 1.0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a job: {created}"))
        .to_owned();
    eventually(Duration::from_secs(60), "the job to finish", || {
        let (base, key, job) = (base.clone(), key.clone(), job.clone());
        async move {
            let got: Value = http_client()
                .get(format!("{base}/v1/audio-jobs/{job}"))
                .header("x-api-key", &key)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (got["status"] == "succeeded").then_some(())
        }
    })
    .await;
    let endpoint: Value = http_client()
        .post(format!("{base}/v1/webhook-endpoints"))
        .header("x-api-key", &key)
        .json(&json!({"url": "http://127.0.0.1:9/hook"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = endpoint["id"].as_str().expect("an endpoint").to_owned();

    // Bodies.
    let bodies: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/v1/tts".into(),
            json!({"text": "Hi.", "voice": "en_US-joe-medium", "format": "wav", "speed": 1.0,
                   "sample_rate": 22050, "timestamps": false, "text_type": "text"}),
        ),
        (
            Method::POST,
            "/v1/audio/speech".into(),
            json!({"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "wav",
                   "speed": 1.0}),
        ),
        (
            Method::POST,
            "/v1/sound-effects".into(),
            json!({"prompt": "a door creaks", "duration_seconds": 1.5}),
        ),
        (
            Method::POST,
            "/v1/background-music".into(),
            json!({"prompt": "calm piano", "text": "Once upon a time."}),
        ),
        (
            Method::POST,
            "/v1/webhook-endpoints".into(),
            json!({"url": "https://example.com/hook", "event_types": ["audio.job.completed"],
                   "description": "d", "rate_limit_per_second": 5}),
        ),
        (
            Method::PATCH,
            format!("/v1/webhook-endpoints/{endpoint}"),
            json!({"description": "d", "disabled": false, "event_types": ["audio.job.completed"]}),
        ),
        (
            Method::POST,
            "/v1/admin/api-keys".into(),
            json!({"name": "k", "scopes": ["tts"], "expires_at": "2099-01-01T00:00:00Z"}),
        ),
        (
            Method::POST,
            "/v1/inbound/sources".into(),
            json!({"name": "orders"}),
        ),
        (
            Method::POST,
            "/v1/auth/token".into(),
            json!({"ttl_seconds": 300}),
        ),
        (
            Method::POST,
            format!("/v1/webhook-endpoints/{endpoint}/test"),
            json!({"event_type": "audio.job.completed"}),
        ),
        (
            Method::POST,
            "/v1/inbound/dead-letters/redrive".into(),
            json!({"source": "github", "event_id": "evt_x"}),
        ),
    ];
    for (method, path, template) in bodies {
        let what = format!("{method} {path}");
        run(&what, body(template), |body| {
            block(async {
                let response = http_client()
                    .request(method.clone(), format!("{base}{path}"))
                    .header("x-api-key", &key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                check(response, &format!("{what} {body}")).await.map(drop)
            })
        });
        // Bodies that are not JSON at all, or not UTF-8.
        run(
            &format!("{what} raw"),
            prop::collection::vec(any::<u8>(), 0..64),
            |bytes| {
                block(async {
                    let response = http_client()
                        .request(method.clone(), format!("{base}{path}"))
                        .header("x-api-key", &key)
                        .header("content-type", "application/json")
                        .body(bytes.clone())
                        .send()
                        .await
                        .unwrap();
                    check(response, &format!("{what} {bytes:?}"))
                        .await
                        .map(drop)
                })
            },
        );
    }

    // Query strings, from the parameters the routes know and arbitrary ones.
    let names = prop_oneof![
        Just("from".to_owned()),
        Just("to".to_owned()),
        Just("key_id".to_owned()),
        Just("limit".to_owned()),
        Just("cursor".to_owned()),
        Just("status".to_owned()),
        Just("type".to_owned()),
        Just("source".to_owned()),
        Just("state".to_owned()),
        Just("since".to_owned()),
        Just("until".to_owned()),
        "[a-z_]{1,8}",
    ];
    let query = prop::collection::vec((names, text()), 0..4);
    for path in [
        "/v1/usage".to_owned(),
        "/v1/voices".to_owned(),
        "/v1/audio-jobs".to_owned(),
        "/v1/event-types".to_owned(),
        "/v1/webhook-endpoints".to_owned(),
        format!("/v1/webhook-endpoints/{endpoint}/deliveries"),
        format!("/v1/webhook-endpoints/{endpoint}/attempts"),
        "/v1/inbound/events".to_owned(),
        "/v1/inbound/sources".to_owned(),
        "/v1/admin/api-keys".to_owned(),
    ] {
        run(&format!("GET {path}"), query.clone(), |pairs| {
            block(async {
                let mut url = reqwest::Url::parse(&format!("{base}{path}")).unwrap();
                url.query_pairs_mut().extend_pairs(pairs.iter());
                let response = http_client()
                    .get(url.clone())
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                check(response, url.as_str()).await.map(drop)
            })
        });
    }

    // Byte ranges of a finished job's audio: 206, 416, the whole file, or 400 naming the forms
    // a malformed `bytes=` range may take; never 5xx.
    let number = prop_oneof![
        Just(String::new()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("-0".to_owned()),
        Just("99999999999999999999999".to_owned()),
    ];
    let range = prop_oneof![
        (number.clone(), number).prop_map(|(a, b)| format!("bytes={a}-{b}")),
        text().prop_map(|t| format!("bytes={t}")),
        text(),
        Just("bytes=0-1,2-3,4-5".to_owned()),
        Just("bytes=-".to_owned()),
    ];
    run("GET audio with Range", range, |range| {
        block(async {
            let Ok(header) = reqwest::header::HeaderValue::from_str(&range) else {
                return Ok(());
            };
            let response = http_client()
                .get(format!("{base}/v1/audio-jobs/{job}/audio"))
                .header("x-api-key", &key)
                .header("range", header)
                .send()
                .await
                .unwrap();
            let status = check(response, &format!("range {range:?}")).await?;
            prop_assert!(
                matches!(status, 200 | 206 | 400 | 416),
                "range {range:?}: {status}"
            );
            Ok(())
        })
    });

    // Credentials: any x-api-key or Authorization that is not genuine is 401, never more.
    let b64 = "[A-Za-z0-9_-]{0,40}";
    let credential = prop_oneof![
        text().prop_map(|t| ("x-api-key", t)),
        text().prop_map(|t| ("authorization", format!("Bearer {t}"))),
        text().prop_map(|t| ("authorization", t)),
        (b64, b64, b64).prop_map(|(a, b, c)| ("authorization", format!("Bearer {a}.{b}.{c}"))),
        value().prop_map(|claims| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            (
                "authorization",
                format!(
                    "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
                    b64.encode(claims.to_string()),
                    b64.encode([0u8; 32])
                ),
            )
        }),
        Just((
            "authorization",
            "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.".to_owned()
        )),
    ];
    run("credentials", credential, |(name, value)| {
        block(async {
            let Ok(header) = reqwest::header::HeaderValue::from_str(&value) else {
                return Ok(());
            };
            let response = http_client()
                .get(format!("{base}/v1/voices"))
                .header(name, header)
                .send()
                .await
                .unwrap();
            let status = check(response, &format!("{name}: {value:?}")).await?;
            prop_assert_eq!(status, 401, "{}: {:?}", name, value);
            Ok(())
        })
    });
}
