//! `GET /openapi.json`, generated from the handlers: every route of the README's table with its
//! methods, what each needs and answers, every reference resolving; checked against the running
//! gateway itself. `GET /docs` and its script and style: served by the gateway, under a CSP that
//! allows no inline code.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use test_stack::{Service, Stack};
use test_support::TestDatabase;

/// Every `/v1` route of the README's gateway table, with its methods.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/auth/verify", &["get"]),
    ("/v1/admin/api-keys", &["get", "post"]),
    ("/v1/admin/api-keys/{id}", &["delete"]),
    ("/v1/auth/token", &["post"]),
    ("/v1/usage", &["get"]),
    ("/v1/voices", &["get"]),
    ("/v1/tts", &["post"]),
    ("/v1/audio/speech", &["post"]),
    ("/v1/sound-effects", &["post"]),
    ("/v1/background-music", &["post"]),
    ("/v1/audio-jobs", &["get"]),
    ("/v1/audio-jobs/{id}", &["delete", "get"]),
    ("/v1/audio-jobs/{id}/audio", &["get"]),
    ("/v1/event-types", &["get"]),
    ("/v1/webhook-endpoints", &["get", "post"]),
    ("/v1/webhook-endpoints/{id}", &["delete", "get", "patch"]),
    ("/v1/webhook-endpoints/{id}/secret", &["get"]),
    ("/v1/webhook-endpoints/{id}/secret/rotate", &["post"]),
    ("/v1/webhook-endpoints/{id}/deliveries", &["get"]),
    ("/v1/webhook-endpoints/{id}/attempts", &["get"]),
    ("/v1/deliveries/{id}/retry", &["post"]),
    ("/v1/webhook-endpoints/{id}/redrive", &["post"]),
    ("/v1/webhook-endpoints/{id}/test", &["post"]),
    ("/v1/inbound/sources", &["get", "post"]),
    ("/v1/inbound/sources/{name}", &["delete"]),
    ("/v1/inbound/sources/{name}/secret/rotate", &["post"]),
    ("/v1/inbound/events", &["get"]),
    ("/v1/inbound/events/{id}", &["get"]),
    ("/v1/inbound/dead-letters/redrive", &["post"]),
    ("/v1/inbound/webhook-alerts", &["get"]),
    ("/v1/inbound/routing-rules", &["get"]),
    ("/v1/calls/{id}/say", &["post"]),
    ("/v1/calls/{id}/clear", &["post"]),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "patch", "delete", "head", "options", "trace",
];

/// Every operation of the document: path, method, operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(*method) {
                found.push((path.clone(), (*method).to_owned(), operation.clone()));
            }
        }
    }
    found
}

/// Every `$ref` in the document.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target);
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

/// Whether HTML carries an inline event handler attribute (` onclick=`, ` onload=`, …).
fn has_event_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(at, _)| {
        let rest = &html[at + 3..];
        let name = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        name > 0 && rest[name..].trim_start().starts_with('=')
    })
}

/// A response of an operation, following its `$ref` to the shared responses.
fn response<'a>(doc: &'a Value, operation: &'a Value, status: &str) -> Option<&'a Value> {
    let response = operation["responses"].get(status)?;
    match response.get("$ref").and_then(Value::as_str) {
        Some(target) => doc.pointer(target.strip_prefix('#')?),
        None => Some(response),
    }
}

#[tokio::test]
async fn the_document_names_every_route_as_the_gateway_serves_it() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let client = test_support::http_client();

    // Served without a key and outside the rate limiter, cacheable, revalidated by its ETag.
    let answer = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let headers = answer.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public")
    );
    assert!(headers.get("ratelimit").is_none());
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let doc: Value = answer.json().await.expect("valid JSON");
    let again = client
        .get(format!("{base}/openapi.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Sonora");
    assert!(!doc["info"]["version"].as_str().unwrap().is_empty());

    // Exactly the README's routes, with their methods, and /health.
    let mut expected: BTreeMap<String, BTreeSet<String>> = ROUTES
        .iter()
        .map(|(path, methods)| {
            (
                (*path).to_owned(),
                methods.iter().map(|m| (*m).to_owned()).collect(),
            )
        })
        .collect();
    expected.insert("/health".to_owned(), BTreeSet::from(["get".to_owned()]));
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, method, _) in operations(&doc) {
        documented.entry(path).or_default().insert(method);
    }
    assert_eq!(documented, expected);

    // Each operation: a one-line summary, a unique id, a declared tag, its path's parameters, a
    // key needed (but for /health), and what the key check and the limiter answer.
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tag in [
        "speech",
        "voices",
        "keys",
        "usage",
        "audio jobs",
        "partner webhooks",
        "inbound webhooks",
    ] {
        assert!(tags.contains(tag), "{tag}");
    }
    let mut ids = BTreeSet::new();
    for (path, method, operation) in operations(&doc) {
        let name = format!("{} {path}", method.to_uppercase());
        let summary = operation["summary"].as_str().unwrap_or_default();
        assert!(
            !summary.is_empty() && !summary.contains('\n'),
            "{name}: {summary:?}"
        );
        assert!(
            ids.insert(operation["operationId"].as_str().unwrap().to_owned()),
            "{name}: operationId used twice"
        );
        let tag = operation["tags"][0].as_str().unwrap_or_default();
        assert!(tags.contains(tag), "{name}: tag {tag:?}");
        for parameter in path.split('/').filter_map(|s| s.strip_prefix('{')) {
            let parameter = parameter.trim_end_matches('}');
            assert!(
                operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == parameter && p["in"] == "path" && p["required"] == true),
                "{name}: path parameter {parameter}"
            );
        }
        let security = operation["security"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if path == "/health" {
            assert!(
                security.iter().all(|s| s == &serde_json::json!({})),
                "{name}"
            );
            continue;
        }
        let named: BTreeSet<&str> = security
            .iter()
            .flat_map(|s| s.as_object().unwrap().keys().map(String::as_str))
            .collect();
        assert_eq!(named, BTreeSet::from(["api_key", "bearer"]), "{name}");
        assert!(
            operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .any(|s| s.starts_with('2')),
            "{name}: no success"
        );
        for status in ["401", "429", "503"] {
            let answer =
                response(&doc, &operation, status).unwrap_or_else(|| panic!("{name}: no {status}"));
            assert!(
                answer["content"]["application/problem+json"]["schema"]["$ref"]
                    .as_str()
                    .is_some_and(|r| r == "#/components/schemas/Problem"),
                "{name} {status}: {answer}"
            );
        }
        let limited = response(&doc, &operation, "429").unwrap();
        for header in ["RateLimit", "RateLimit-Policy", "Retry-After"] {
            assert!(limited["headers"].get(header).is_some(), "{name}: {header}");
        }
    }

    // Every reference resolves to a component of the document.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        assert!(
            target.starts_with("#/components/schemas/")
                || target.starts_with("#/components/responses/"),
            "{target}"
        );
        assert!(
            doc.pointer(&target[1..]).is_some(),
            "{target} resolves to nothing"
        );
    }

    // A body that may be left out is optional, not JSON null; an absent parameter is not null.
    for (path, method, operation) in operations(&doc) {
        if let Some(body) = operation.get("requestBody") {
            let schema = &body["content"]["application/json"]["schema"];
            assert!(schema.get("oneOf").is_none(), "{method} {path}: {schema}");
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            assert!(
                !parameter["schema"]["type"].is_array(),
                "{method} {path}: {parameter}"
            );
        }
    }
    let token = &doc["paths"]["/v1/auth/token"]["post"]["requestBody"];
    assert_eq!(token["required"], false);
    assert_eq!(
        token["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TokenRequest"
    );
    assert_eq!(
        doc["paths"]["/v1/tts"]["post"]["requestBody"]["required"],
        true
    );

    // Speech answers audio, as bytes.
    let speech = &doc["paths"]["/v1/tts"]["post"]["responses"]["200"]["content"];
    for media in ["audio/wav", "audio/mpeg"] {
        let schema = &speech[media]["schema"];
        let schema = match schema["$ref"].as_str() {
            Some(target) => doc.pointer(&target[1..]).unwrap(),
            None => schema,
        };
        assert_eq!(
            (&schema["type"], &schema["format"]),
            (&serde_json::json!("string"), &serde_json::json!("binary")),
            "{media}"
        );
    }

    // The Problem schema is what the gateway really sends.
    let problem = client
        .get(format!("{base}/v1/voices"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem.status(), 401);
    let problem: Value = problem.json().await.unwrap();
    let schema = &doc["components"]["schemas"]["Problem"];
    for member in problem.as_object().unwrap().keys() {
        assert!(
            schema["properties"].get(member).is_some(),
            "the problem's {member} is not in the schema"
        );
    }
    for required in schema["required"].as_array().unwrap() {
        assert!(problem.get(required.as_str().unwrap()).is_some());
    }

    // The document is the gateway's own: each operation is served (without a key: 401, not
    // 404 or 405), and a method it does not list is 405 with exactly the documented ones.
    for (path, methods) in ROUTES {
        let url = format!(
            "{base}{}",
            path.replace("{id}", "x1").replace("{name}", "x1")
        );
        for method in *methods {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = client.request(method.clone(), &url).send().await.unwrap();
            assert_eq!(answer.status(), 401, "{method} {path}");
        }
        let answer = client.put(&url).send().await.unwrap();
        assert_eq!(answer.status(), 405, "PUT {path}");
        let allowed: BTreeSet<String> = answer.headers()["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_lowercase())
            .collect();
        let documented: BTreeSet<String> = methods.iter().map(|m| (*m).to_owned()).collect();
        assert_eq!(allowed, documented, "{path}");
    }
}

#[tokio::test]
async fn the_docs_page_is_served_with_its_script_and_style_and_no_inline_code() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let client = test_support::http_client();

    let mut bodies = BTreeMap::new();
    for (path, content_type) in [
        ("/docs", "text/html; charset=utf-8"),
        ("/docs/docs.js", "text/javascript; charset=utf-8"),
        ("/docs/docs.css", "text/css; charset=utf-8"),
    ] {
        let answer = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let headers = answer.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
        }
        assert!(headers.get("ratelimit").is_none(), "{path}");
        bodies.insert(path, answer.text().await.unwrap());
    }

    // The page loads its own script and style, and carries no inline script, style or handler.
    let page = &bodies["/docs"];
    assert!(page.contains(r#"<script src="/docs/docs.js" defer></script>"#));
    assert!(page.contains(r#"<link rel="stylesheet" href="/docs/docs.css">"#));
    assert_eq!(page.matches("<script").count(), 1);
    assert!(!page.contains("<style"));
    assert!(!page.contains(" style="));
    assert!(!has_event_handler(page), "an inline event handler");
    // The script fetches the document from this origin and writes no HTML.
    let script = &bodies["/docs/docs.js"];
    assert!(script.contains("fetch('/openapi.json'"));
    assert!(!script.contains("innerHTML"));
    assert!(!script.contains("outerHTML"));
    assert!(!script.contains("insertAdjacentHTML"));
    assert!(!script.contains("document.write"));

    // A wrong method is 405 like any route's; an unknown file under /docs is 404.
    let answer = client.post(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(answer.status(), 405);
    let answer = client
        .get(format!("{base}/docs/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}
