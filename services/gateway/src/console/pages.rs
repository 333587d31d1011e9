//! The console's pages. Each one asks the API's own handlers (in process, as the signed-in key)
//! for what it shows and renders it; a section whose call fails says why instead of failing the
//! whole page.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use http_problem::Problem;
use internal_rpc::{Scope, on_behalf};
use lifecycle::Readiness;
use maud::{Markup, html};
use serde_json::Value;

use super::{Visitor, api, layout, visitor};
use crate::{admin, audio, inbound, usage, voices, webhooks};

/// Unwraps a [`visitor`] or answers with its redirect.
macro_rules! signed_in {
    ($req:expr) => {
        match visitor(&$req).await {
            Ok(visitor) => visitor,
            Err(response) => return response,
        }
    };
}

fn data<T: 'static>(req: &HttpRequest) -> Result<web::Data<T>, Problem> {
    req.app_data::<web::Data<T>>()
        .cloned()
        .ok_or_else(Problem::internal)
}

fn query<T: serde::de::DeserializeOwned>(text: &str) -> Result<web::Query<T>, Problem> {
    web::Query::from_query(text).map_err(|_| Problem::invalid_request("a malformed filter"))
}

/// A problem shown in place of a section.
fn failed(problem: &Problem) -> Markup {
    html! {
        p.error role="status" {
            (problem.detail.as_deref().unwrap_or(&problem.title))
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::String(s) if s.is_empty() => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as people read it: `2026-12-02 11:46:43`.
fn when(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "—".to_owned(),
            |t| {
                t.with_timezone(&Utc)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            },
        )
}

fn rows(value: &Value, field: &str) -> Vec<Value> {
    value[field].as_array().cloned().unwrap_or_default()
}

fn badge(status: &str) -> Markup {
    let class = match status {
        "up" | "ready" | "delivered" | "enabled" | "done" | "succeeded" | "success" | "active" => {
            "ok"
        }
        "pending" | "queued" | "submitted" | "received" | "dispatched" | "processing"
        | "degraded" => "wait",
        _ => "bad",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

/// A small bar chart, drawn on the server: one column per entry, each a stack of
/// `(value, class)`.
fn bars(label: &str, columns: &[(String, Vec<(f64, &'static str)>)]) -> Markup {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 120.0;
    let max = columns
        .iter()
        .map(|(_, stack)| stack.iter().map(|(v, _)| v).sum::<f64>())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let step = WIDTH / f64::from(u32::try_from(columns.len().max(1)).unwrap_or(u32::MAX));
    // (x, y, height, class, tooltip) of every bar.
    let mut rects = Vec::new();
    let mut x = step * 0.1;
    for (name, stack) in columns {
        let mut base = HEIGHT;
        for (value, class) in stack {
            let h = value / max * (HEIGHT - 4.0);
            if h > 0.0 {
                rects.push((x, base - h, h, *class, format!("{name}: {value}")));
                base -= h;
            }
        }
        x += step;
    }
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT + 2.0) } role="img" aria-label=(label) preserveAspectRatio="none" {
                line x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) class="axis" {}
                @for (x, y, h, class, tip) in &rects {
                    rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", step * 0.8)) height=(format!("{h:.1}")) class=(class) {
                        title { (tip) }
                    }
                }
            }
            figcaption { (label) "; tallest bar " (max) }
        }
    }
}

// --- Overview ---------------------------------------------------------------------------------

pub(crate) async fn overview(req: HttpRequest) -> HttpResponse {
    let visitor = signed_in!(req);
    let readiness = match req.app_data::<web::Data<Readiness>>() {
        Some(readiness) => Some(readiness.report().await),
        None => None,
    };
    let webhooks_section = if visitor.has(Scope::Webhooks) {
        deliveries_overview(&req, &visitor).await
    } else {
        html! { p { "This key has no webhooks scope: no partner endpoints or inbound events to show." } }
    };
    let body = html! {
        section aria-labelledby="services" {
            h2 #services { "Services" }
            @match &readiness {
                Some(report) => {
                    p { "The gateway is " (badge(report.status)) }
                    table {
                        thead { tr { th scope="col" { "Service" } th scope="col" { "Status" } th scope="col" { "Latency" } } }
                        tbody {
                            @for (name, component) in &report.components {
                                tr data-component=(name) {
                                    th scope="row" { (name) }
                                    td { (badge(component.status)) }
                                    td { (component.latency_ms) " ms" }
                                }
                            }
                        }
                    }
                }
                None => p { "Readiness is not known." }
            }
        }
        (webhooks_section)
    };
    layout(&visitor, "/console", "Overview", &[], body)
}

async fn deliveries_overview(req: &HttpRequest, visitor: &Visitor) -> Markup {
    let client = match data::<webhooks::Client>(req) {
        Ok(client) => client,
        Err(problem) => return failed(&problem),
    };
    let principal = visitor.key.principal();
    let stats = client
        .get_ref()
        .clone()
        .get_queue_stats(on_behalf(
            sonora_proto::delivery::v1::GetQueueStatsRequest {
                tenant: visitor.key.tenant.to_string(),
            },
            &principal,
        ))
        .await
        .map(tonic::Response::into_inner);
    // Attempts of the last hour, from the tenant's first 20 endpoints.
    let now = Utc::now();
    let since = now - TimeDelta::hours(1);
    let mut per_minute: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    let endpoints = api(webhooks::list_endpoints(
        visitor.caller(),
        client.clone(),
        web::Query(webhooks::PageQuery::first(20)),
    )
    .await)
    .await;
    if let Ok(endpoints) = &endpoints {
        for endpoint in rows(endpoints, "data") {
            let Some(id) = endpoint["id"].as_str() else {
                continue;
            };
            let Ok(attempts) = api(webhooks::list_attempts(
                visitor.caller(),
                client.clone(),
                web::Path::from(id.to_owned()),
                web::Query(webhooks::AttemptsQuery::first(500)),
            )
            .await)
            .await
            else {
                continue;
            };
            for attempt in rows(&attempts, "data") {
                let Some(at) = attempt["attempted_at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                else {
                    continue;
                };
                if at < since {
                    continue;
                }
                let minute = (now - at).num_minutes();
                let entry = per_minute.entry(minute).or_default();
                if attempt["outcome"] == "success" {
                    entry.0 += 1.0;
                } else {
                    entry.1 += 1.0;
                }
            }
        }
    }
    let (ok, bad) = per_minute
        .values()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let rate = if ok + bad > 0.0 {
        format!("{:.1} %", ok / (ok + bad) * 100.0)
    } else {
        "—".to_owned()
    };
    let columns: Vec<(String, Vec<(f64, &'static str)>)> = (0..60)
        .rev()
        .map(|minute| {
            let (ok, bad) = per_minute.get(&minute).copied().unwrap_or_default();
            (format!("{minute} min ago"), vec![(ok, "ok"), (bad, "bad")])
        })
        .collect();
    let inbound_count = |state: &'static str| async move {
        let client = data::<webhooks::IngestClient>(req)?;
        let page = api(inbound::list_events(
            visitor.caller(),
            client,
            web::Query(inbound::EventsQuery::state(state)),
        )
        .await)
        .await?;
        Ok::<_, Problem>(rows(&page, "data").len())
    };
    let inbound_failed = inbound_count("failed").await;
    let inbound_dead = inbound_count("dead_letter").await;
    let alerts = match data::<webhooks::IngestClient>(req) {
        Ok(client) => api(inbound::list_webhook_alerts(visitor.caller(), client).await).await,
        Err(problem) => Err(problem),
    };
    html! {
        section aria-labelledby="deliveries" {
            h2 #deliveries { "Partner deliveries" }
            @match &stats {
                Ok(stats) => {
                    dl.stats {
                        div { dt { "Pending" } dd #stat-pending { (stats.pending) } }
                        div { dt { "Delivered" } dd { (stats.delivered) } }
                        div { dt { "Failing" } dd { (stats.failed) } }
                        div { dt { "Dead letters" } dd #stat-dead { (stats.dead_letter) } }
                        div { dt { "Attempts, last hour" } dd { (ok + bad) } }
                        div { dt { "Per minute" } dd { (format!("{:.1}", (ok + bad) / 60.0)) } }
                        div { dt { "Success rate" } dd #stat-success { (rate) } }
                    }
                }
                Err(status) => (failed(&crate::routes::backend_problem("delivery", status)))
            }
            (bars("Delivery attempts per minute, last hour (green: success, red: failure)", &columns))
        }
        section aria-labelledby="inbound-failures" {
            h2 #inbound-failures { "Inbound webhooks" }
            dl.stats {
                div { dt { "Failed, retrying" } dd { @match &inbound_failed { Ok(n) => (n), Err(_) => "—" } } }
                div { dt { "Dead letters" } dd { @match &inbound_dead { Ok(n) => (n), Err(_) => "—" } } }
                div { dt { "Alerts, last hour" } dd #stat-alerts { @match &alerts { Ok(list) => (rows(list, "data").len()), Err(_) => "—" } } }
            }
            (webhook_alerts(&alerts))
        }
    }
}

/// The `WEBHOOK ALERT`s of the last hour on the tenant's sources, or why they cannot be shown.
fn webhook_alerts(alerts: &Result<Value, Problem>) -> Markup {
    html! {
        h3 #webhook-alerts-heading { "WEBHOOK ALERTs of the last hour" }
        @match alerts {
            Ok(list) => {
                @let data = rows(list, "data");
                @if list["monitoring"] == "disabled" {
                    p #alerts-disabled { "Failure monitoring is turned off on this installation (WEBHOOK_MONITORING_ENABLED), so no alert can be raised." }
                } @else {
                    p.help { "An alert is raised when one of this tenant's source paths fails " (text(&list["failure_threshold"])) " times within an hour (a refused signature, a malformed body, an action that did not succeed)." }
                }
                @if data.is_empty() {
                    p #no-alerts { "No alerts in the last hour." }
                } @else {
                    table #webhook-alerts aria-labelledby="webhook-alerts-heading" {
                        thead { tr { th scope="col" { "Path" } th scope="col" { "Source" } th scope="col" { "Raised" } th scope="col" { "Failures, last hour" } } }
                        tbody {
                            @for alert in &data {
                                tr {
                                    th scope="row" { code { (text(&alert["path"])) } }
                                    td { (text(&alert["source"])) }
                                    td { (when(&alert["raised_at"])) }
                                    td.failures { (text(&alert["failures_last_hour"])) }
                                }
                            }
                        }
                    }
                }
            }
            Err(problem) => {
                p #alerts-unavailable { "Alerts: — " }
                (failed(problem))
            }
        }
    }
}

// --- Partner endpoints ------------------------------------------------------------------------

pub(crate) async fn endpoints(req: HttpRequest) -> HttpResponse {
    let visitor = signed_in!(req);
    let listed = match data::<webhooks::Client>(&req) {
        Ok(client) => {
            api(webhooks::list_endpoints(
                visitor.caller(),
                client,
                web::Query(webhooks::PageQuery::first(500)),
            )
            .await)
            .await
        }
        Err(problem) => Err(problem),
    };
    let body = html! {
        section aria-labelledby="list" {
            h2 #list { "Endpoints" }
            @match &listed {
                Ok(page) => {
                    @let endpoints = rows(page, "data");
                    @if endpoints.is_empty() {
                        p #no-endpoints { "No partner endpoints yet." }
                    } @else {
                        table #endpoints {
                            thead { tr { th scope="col" { "Endpoint" } th scope="col" { "Description" } th scope="col" { "Events" } th scope="col" { "State" } th scope="col" { "Created" } } }
                            tbody {
                                @for e in &endpoints {
                                    tr {
                                        td { a href={ "/console/endpoints/" (text(&e["id"])) } { (text(&e["url"])) } }
                                        td.description { (text(&e["description"])) }
                                        td { (e["event_types"].as_array().map(|t| t.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default().replace('*', "every type")) }
                                        td { (badge(if e["enabled"] == true { "enabled" } else { "disabled" })) }
                                        td { (when(&e["created_at"])) }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
        section aria-labelledby="create" {
            h2 #create { "Add an endpoint" }
            form data-api="/v1/webhook-endpoints" data-method="POST" data-go="/console/endpoints/{id}" #create-endpoint {
                label for="url" { "URL" }
                input #url name="url" type="url" required placeholder="https://partner.example/webhooks";
                label for="description" { "Description" }
                input #description name="description" type="text" maxlength="1024";
                label for="event_types" { "Event types (comma-separated; empty for every type)" }
                input #event_types name="event_types" data-kind="list" type="text" placeholder="job.completed, job.failed";
                label for="rate" { "Rate limit per second (0: none)" }
                input #rate name="rate_limit_per_second" data-kind="int" type="number" min="0" max="10000" value="0";
                label for="signing" { "Signing" }
                select #signing name="signing" {
                    option value="hmac-sha256" { "HMAC-SHA256 (whsec_)" }
                    option value="ed25519" { "Ed25519 (whpk_)" }
                }
                div.actions { button type="submit" { "Create endpoint" } }
            }
        }
    };
    layout(
        &visitor,
        "/console/endpoints",
        "Partner endpoints",
        &[],
        body,
    )
}

pub(crate) async fn endpoint(req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let visitor = signed_in!(req);
    let id = id.into_inner();
    let client = match data::<webhooks::Client>(&req) {
        Ok(client) => client,
        Err(problem) => return problem.to_response(),
    };
    let endpoint = match api(webhooks::get_endpoint(
        visitor.caller(),
        client.clone(),
        web::Path::from(id.clone()),
    )
    .await)
    .await
    {
        Ok(endpoint) => endpoint,
        Err(problem) => {
            return layout(
                &visitor,
                "/console/endpoints",
                "Endpoint",
                &[],
                html! { (failed(&problem)) p { a href="/console/endpoints" { "Back to the endpoints" } } },
            );
        }
    };
    let deliveries = api(webhooks::list_deliveries(
        visitor.caller(),
        client.clone(),
        web::Path::from(id.clone()),
        web::Query(webhooks::DeliveriesQuery::first(100)),
    )
    .await)
    .await;
    let attempts = api(webhooks::list_attempts(
        visitor.caller(),
        client.clone(),
        web::Path::from(id.clone()),
        web::Query(webhooks::AttemptsQuery::first(500)),
    )
    .await)
    .await;
    let mut by_delivery: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    if let Ok(attempts) = &attempts {
        for attempt in rows(attempts, "data") {
            by_delivery
                .entry(text(&attempt["delivery_id"]))
                .or_default()
                .push(attempt);
        }
    }
    let enabled = endpoint["enabled"] == true;
    let api_path = format!("/v1/webhook-endpoints/{id}");
    let event_types = endpoint["event_types"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(text)
                .filter(|t| t != "*")
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let body = html! {
        section aria-labelledby="details" {
            h2 #details { "Details" }
            dl.details {
                div { dt { "Id" } dd { code { (id) } } }
                div { dt { "URL" } dd #endpoint-url { (text(&endpoint["url"])) } }
                div { dt { "Description" } dd #endpoint-description { (text(&endpoint["description"])) } }
                div { dt { "State" } dd #endpoint-state { (badge(if enabled { "enabled" } else { "disabled" })) @if let Some(reason) = endpoint["disabled_reason"].as_str() { " " (reason) } } }
                div { dt { "Signing" } dd { (text(&endpoint["signing"])) } }
                div { dt { "Event types" } dd { @if event_types.is_empty() { "every type" } @else { (event_types) } } }
            }
            div.actions {
                @if enabled {
                    button type="button" data-api=(api_path) data-method="PATCH" data-body=r#"{"enabled":false}"# #disable { "Disable" }
                    button type="button" data-api={ (api_path) "/test" } data-method="POST" data-done="Test event sent; it appears below within seconds." #send-test { "Send a test event" }
                } @else {
                    button type="button" data-api=(api_path) data-method="PATCH" data-body=r#"{"enabled":true}"# #enable { "Enable" }
                }
                button type="button" data-api={ (api_path) "/redrive" } data-method="POST" data-done="Dead letters queued again." #redrive { "Redrive dead letters" }
            }
        }
        section aria-labelledby="secret" {
            h2 #secret { "Signing secret" }
            p { "Partners verify each webhook with it. After a rotation the old secret keeps signing beside the new one for 24 hours." }
            div.actions {
                button type="button" data-api={ (api_path) "/secret" } data-method="GET" data-show="key" data-into="secret-value" #reveal-secret { "Reveal" }
                button type="button" data-api={ (api_path) "/secret/rotate" } data-method="POST" data-show="key" data-into="secret-value" #rotate-secret { "Rotate" }
            }
            output #secret-value aria-live="polite" {}
        }
        section aria-labelledby="deliveries" {
            h2 #deliveries { "Deliveries" }
            @match &deliveries {
                Ok(page) => {
                    @let list = rows(page, "data");
                    @if list.is_empty() {
                        p #no-deliveries { "No deliveries yet. Send a test event to see one." }
                    }
                    ol.deliveries #delivery-list {
                        @for d in &list {
                            @let delivery_id = text(&d["id"]);
                            @let status = text(&d["status"]);
                            li.delivery data-status=(status) {
                                div.row {
                                    (badge(&status))
                                    code { (delivery_id) }
                                    span { "attempts " (text(&d["attempt_count"])) "/" (text(&d["max_attempts"])) }
                                    span { "last status " (text(&d["last_response_status"])) }
                                    span { (when(&d["created_at"])) }
                                    @if status != "delivered" {
                                        button type="button" data-api={ "/v1/deliveries/" (delivery_id) "/retry" } data-method="POST" data-done="Retry queued." class="retry" { "Retry" }
                                    }
                                }
                                @if let Some(error) = d["last_error"].as_str() { p.error-text { (error) } }
                                @for a in by_delivery.get(&delivery_id).map(Vec::as_slice).unwrap_or_default() {
                                    details.attempt {
                                        summary {
                                            (badge(&text(&a["outcome"]))) " HTTP " (text(&a["response_status"])) " · " (text(&a["duration_ms"])) " ms · " (when(&a["attempted_at"]))
                                        }
                                        h3 { "Request headers" }
                                        table.headers {
                                            tbody {
                                                @if let Some(headers) = a["request_headers"].as_object() {
                                                    @for (name, value) in headers {
                                                        tr { th scope="row" { (name) } td { (text(value)) } }
                                                    }
                                                }
                                            }
                                        }
                                        h3 { "Response body" }
                                        pre.body { (a["response_body"].as_str().unwrap_or_default()) }
                                        @if let Some(error) = a["error"].as_str() { p.error-text { (error) } }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
        section aria-labelledby="edit" {
            h2 #edit { "Edit" }
            form data-api=(api_path) data-method="PATCH" #edit-endpoint {
                label for="edit-url" { "URL" }
                input #edit-url name="url" type="url" required value=(text(&endpoint["url"]));
                label for="edit-description" { "Description" }
                input #edit-description name="description" type="text" maxlength="1024" value=(endpoint["description"].as_str().unwrap_or_default());
                label for="edit-types" { "Event types (comma-separated; empty for every type)" }
                input #edit-types name="event_types" data-kind="list" type="text" value=(event_types);
                label for="edit-rate" { "Rate limit per second (0: none)" }
                input #edit-rate name="rate_limit_per_second" data-kind="int" type="number" min="0" max="10000" value=(endpoint["rate_limit_per_second"].as_u64().unwrap_or(0));
                div.actions { button type="submit" { "Save" } }
            }
        }
        section aria-labelledby="verify" {
            h2 #verify { "Verifying the signature (for the partner)" }
            p { "Each webhook carries " code { "webhook-id" } ", " code { "webhook-timestamp" } " and " code { "webhook-signature" } " (Standard Webhooks). The signed content is " code { "{id}.{timestamp}.{body}" } "; reject timestamps more than five minutes away." }
            h3 { "Python" }
            pre.snippet #snippet-python { (PYTHON_SNIPPET) }
            h3 { "Node.js" }
            pre.snippet #snippet-node { (NODE_SNIPPET) }
        }
    };
    layout(&visitor, "/console/endpoints", "Endpoint", &[], body)
}

const PYTHON_SNIPPET: &str = r#"import base64, hashlib, hmac, time

def verify(secret: str, headers: dict, body: bytes) -> bool:
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, sig.split(",", 1)[1])
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )"#;

const NODE_SNIPPET: &str = r#"const crypto = require("node:crypto");

function verify(secret, headers, body /* Buffer */) {
  const id = headers["webhook-id"], timestamp = headers["webhook-timestamp"];
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > 300) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = crypto.createHmac("sha256", key)
    .update(`${id}.${timestamp}.`).update(body).digest();
  return headers["webhook-signature"].split(" ").some((sig) => {
    const [version, value] = sig.split(",");
    const given = Buffer.from(value || "", "base64");
    return version === "v1" && given.length === expected.length
      && crypto.timingSafeEqual(given, expected);
  });
}"#;

// --- Voices and playground --------------------------------------------------------------------

pub(crate) async fn playground(req: HttpRequest) -> HttpResponse {
    let visitor = signed_in!(req);
    let catalogue = match data::<crate::Peers>(&req) {
        Ok(peers) => api(voices::list_voices(visitor.caller(), peers).await).await,
        Err(problem) => Err(problem),
    };
    let voices = catalogue
        .as_ref()
        .map(|c| rows(c, "voices"))
        .unwrap_or_default();
    let body = html! {
        section aria-labelledby="speak" {
            h2 #speak { "Playground" }
            @if !visitor.has(Scope::Tts) {
                p.error { "This key has no tts scope: it cannot speak." }
            }
            form #playground {
                label for="pg-text" { "Text or SSML" }
                textarea #pg-text name="text" rows="4" maxlength="4096" required { "Hello from Sonora. This is the playground speaking." }
                div.grid {
                    div {
                        label for="pg-voice" { "Voice" }
                        select #pg-voice name="voice" {
                            @for v in &voices {
                                @if v["enabled"] != false {
                                    option value=(text(&v["slug"])) selected[v["default"] == true] data-speakers=(v["speakers"].to_string()) {
                                        (text(&v["display_name"])) " (" (text(&v["language"])) ")"
                                    }
                                }
                            }
                        }
                    }
                    div {
                        label for="pg-speaker" { "Speaker" }
                        select #pg-speaker name="speaker" { option value="" { "Default" } }
                    }
                    div {
                        label for="pg-speed" { "Speed" }
                        input #pg-speed name="speed" type="number" min="0.25" max="4" step="0.05" value="1";
                    }
                    div {
                        label for="pg-format" { "Format" }
                        select #pg-format name="format" {
                            option value="mp3" selected { "MP3 (plays as it streams)" }
                            option value="wav" { "WAV" }
                            option value="opus" { "Opus" }
                            option value="flac" { "FLAC" }
                        }
                    }
                    div {
                        label for="pg-type" { "Text type" }
                        select #pg-type name="text_type" {
                            option value="" { "Detect (<speak> is SSML)" }
                            option value="text" { "Plain text" }
                            option value="ssml" { "SSML" }
                        }
                    }
                }
                div.actions {
                    button type="submit" #pg-speak { "Speak" }
                    button type="button" #pg-copy-curl { "Copy curl command" }
                }
            }
            p #pg-status role="status" aria-live="polite" {}
            dl.stats {
                div { dt { "Time to first audio" } dd #pg-ttfa { "—" } }
                div { dt { "Duration" } dd #pg-duration { "—" } }
            }
            audio #pg-audio controls {}
            p #pg-words.words aria-label="Word timings" {}
            pre.snippet #pg-curl {}
        }
        section aria-labelledby="catalogue" {
            h2 #catalogue { "Voice catalogue" }
            @match &catalogue {
                Ok(_) => {
                    table #voices {
                        thead { tr { th scope="col" { "Voice" } th scope="col" { "Slug" } th scope="col" { "Language" } th scope="col" { "Quality" } th scope="col" { "Rate" } th scope="col" { "Speakers" } th scope="col" { "State" } } }
                        tbody {
                            @for v in &voices {
                                tr {
                                    th scope="row" { (text(&v["display_name"])) @if v["default"] == true { " (default)" } }
                                    td { code { (text(&v["slug"])) } }
                                    td { (text(&v["language"])) }
                                    td { (text(&v["quality"])) }
                                    td { (text(&v["sample_rate"])) " Hz" }
                                    td { (v["speakers"].as_array().map_or(0, Vec::len).max(1)) }
                                    td { (badge(if v["available"] == false { "unavailable" } else if v["enabled"] == false { "disabled" } else { "enabled" })) }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
    };
    layout(
        &visitor,
        "/console/playground",
        "Voices & playground",
        &["playground.js"],
        body,
    )
}

/// The partner deliveries of the events the listed jobs ended with, by event id: asked of
/// delivery-worker when the key may see deliveries (`webhooks` scope), `None` for an event whose
/// deliveries could not be asked.
async fn event_deliveries(
    req: &HttpRequest,
    visitor: &Visitor,
    listed: &Result<Value, Problem>,
) -> std::collections::HashMap<String, Option<Vec<sonora_proto::delivery::v1::Delivery>>> {
    let (Ok(page), true, Ok(client)) = (
        listed,
        visitor.has(Scope::Webhooks),
        data::<webhooks::Client>(req),
    ) else {
        return std::collections::HashMap::new();
    };
    let principal = visitor.key.principal();
    let asks = rows(page, "jobs")
        .into_iter()
        .filter_map(|job| job["event_id"].as_str().map(str::to_owned))
        .map(|event_id| {
            let (mut client, principal) = (client.get_ref().clone(), principal.clone());
            async move {
                let request = sonora_proto::delivery::v1::ListDeliveriesRequest {
                    event_id: event_id.clone(),
                    page_size: 100,
                    ..Default::default()
                };
                let answer = client.list_deliveries(on_behalf(request, &principal)).await;
                (event_id, answer.ok().map(|a| a.into_inner().deliveries))
            }
        });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// What became of a job's event: delivered to how many of its endpoints, and when first.
fn event_summary(deliveries: Option<&Option<Vec<sonora_proto::delivery::v1::Delivery>>>) -> Markup {
    use sonora_proto::delivery::v1::DeliveryStatus;
    let Some(Some(deliveries)) = deliveries else {
        return html! { "handed to delivery" };
    };
    if deliveries.is_empty() {
        return html! { "no partner delivery (no endpoint subscribed, or not handed over yet)" };
    }
    let delivered: Vec<_> = deliveries
        .iter()
        .filter(|d| d.status() == DeliveryStatus::Delivered)
        .collect();
    let first = delivered
        .iter()
        .map(|d| d.delivered_at_unix_ms)
        .filter(|&ms| ms > 0)
        .min()
        .and_then(DateTime::from_timestamp_millis);
    html! {
        "delivered to " (delivered.len()) " of " (deliveries.len()) " endpoint(s)"
        @if let Some(first) = first { ", first " (first.format("%Y-%m-%d %H:%M:%S")) " UTC" }
        @for d in deliveries.iter().filter(|d| d.status() != DeliveryStatus::Delivered) {
            " " (badge(webhooks::status_name(d.status())))
        }
    }
}

// --- API keys and usage -----------------------------------------------------------------------

pub(crate) async fn keys(req: HttpRequest) -> HttpResponse {
    let visitor = signed_in!(req);
    let listed = match data::<crate::auth::Authenticator>(&req) {
        Ok(authenticator) => api(admin::list(visitor.caller(), authenticator).await).await,
        Err(problem) => Err(problem),
    };
    let since = (Utc::now() - TimeDelta::days(29)).date_naive();
    let used = match (
        data::<database::Pool>(&req),
        data::<crate::ratelimit::Limiter>(&req),
        data::<webhooks::Client>(&req),
    ) {
        (Ok(pool), Ok(limiter), Ok(client)) => {
            api(usage::usage(
                visitor.caller(),
                web::Query(usage::UsageQuery::from_day(since)),
                pool,
                limiter,
                client,
            )
            .await)
            .await
        }
        _ => Err(Problem::internal()),
    };
    let days: Vec<String> = (0..30)
        .map(|d| (since + TimeDelta::days(d)).format("%Y-%m-%d").to_string())
        .collect();
    let body = html! {
        section aria-labelledby="plan" {
            h2 #plan { "Plan and quota" }
            @match &used {
                Ok(u) => {
                    dl.stats {
                        div { dt { "Plan" } dd { (text(&u["quota"]["plan"])) } }
                        div { dt { "Characters this month" } dd { (text(&u["quota"]["used_characters"])) " of " (text(&u["quota"]["monthly_characters"])) } }
                        div { dt { "Resets" } dd { (when(&u["quota"]["resets_at"])) } }
                        div { dt { "Requests (30 days)" } dd { (text(&u["totals"]["requests"])) } }
                        div { dt { "Audio seconds" } dd { (format!("{:.1}", u["totals"]["audio_seconds"].as_f64().unwrap_or(0.0))) } }
                        div { dt { "Webhooks delivered" } dd { (text(&u["totals"]["webhooks_delivered"])) } }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
        section aria-labelledby="keys-title" {
            h2 #keys-title { "API keys" }
            @match &listed {
                Ok(page) => {
                    table #keys {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Scopes" } th scope="col" { "Plan" } th scope="col" { "Created" } th scope="col" { "State" } th scope="col" { "Requests by day (30 days)" } th scope="col" { span.sr-only { "Actions" } } } }
                        tbody {
                            @for k in rows(page, "keys") {
                                @let key_id = text(&k["id"]);
                                @let revoked = !k["revoked_at"].is_null();
                                tr data-key=(key_id) {
                                    th scope="row" { (text(&k["name"])) }
                                    td { code { (text(&k["display"])) } }
                                    td { (k["scopes"].as_array().map(|s| s.iter().map(text).collect::<Vec<_>>().join(" ")).unwrap_or_default()) }
                                    td { (text(&k["plan"])) }
                                    td { (when(&k["created_at"])) }
                                    td { (badge(if revoked { "revoked" } else { "active" })) }
                                    td {
                                        @if let Ok(u) = &used {
                                            (sparkline(&key_id, &days, &rows(u, "days")))
                                        }
                                    }
                                    td {
                                        @if !revoked && key_id != visitor.key.id.to_string() {
                                            button type="button" data-api={ "/v1/admin/api-keys/" (key_id) } data-method="DELETE" data-done="Key revoked." class="revoke" aria-label={ "Revoke " (text(&k["name"])) } { "Revoke" }
                                        } @else if !revoked {
                                            span.help { "this session's key" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
        section aria-labelledby="new-key" {
            h2 #new-key { "Create a key" }
            form data-api="/v1/admin/api-keys" data-method="POST" data-show="key" data-into="created-key" data-done="Key created: copy it now, it is not shown again." #create-key {
                label for="key-name" { "Name" }
                input #key-name name="name" type="text" required maxlength="100";
                fieldset {
                    legend { "Scopes" }
                    @for scope in Scope::ALL {
                        @if visitor.has(scope) {
                            label.check {
                                input type="checkbox" name="scopes" data-kind="multi" value=(scope.as_str()) checked[scope != Scope::Admin];
                                " " (scope.as_str())
                            }
                        }
                    }
                }
                label for="key-plan" { "Plan" }
                select #key-plan name="plan" {
                    @for plan in crate::keys::PLANS {
                        @if crate::keys::plan_rank(plan) <= crate::keys::plan_rank(&visitor.key.plan) {
                            option value=(plan) selected[*plan == visitor.key.plan] { (plan) }
                        }
                    }
                }
                div.actions { button type="submit" { "Create key" } }
            }
            p.help { "The key is shown once, here; copy it now." }
            output #created-key aria-live="polite" {}
        }
    };
    layout(&visitor, "/console/keys", "API keys & usage", &[], body)
}

/// One key's requests per day as a row of bars.
fn sparkline(key_id: &str, days: &[String], usage_days: &[Value]) -> Markup {
    let counts: Vec<f64> = days
        .iter()
        .map(|day| {
            usage_days
                .iter()
                .filter(|row| row["key_id"] == key_id && row["day"] == day.as_str())
                .filter_map(|row| row["requests"].as_f64())
                .sum()
        })
        .collect();
    let max = counts.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let total: f64 = counts.iter().sum();
    html! {
        svg.spark viewBox="0 0 120 24" role="img" aria-label={ (total) " requests in 30 days" } {
            @for (i, c) in counts.iter().enumerate() {
                @let h = c / max * 22.0;
                @if h > 0.0 {
                    rect x=(i * 4) y=(format!("{:.1}", 23.0 - h)) width="3" height=(format!("{h:.1}")) class="ok" {
                        title { (days[i]) ": " (c) }
                    }
                }
            }
        }
    }
}

// --- Audio jobs -------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
pub(crate) struct JobFilter {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, rename = "type")]
    job_type: Option<String>,
}

pub(crate) async fn audio(req: HttpRequest, filter: web::Query<JobFilter>) -> HttpResponse {
    let visitor = signed_in!(req);
    let filter = filter.into_inner();
    let status = filter.status.filter(|s| !s.is_empty());
    let job_type = filter.job_type.filter(|s| !s.is_empty());
    let listed = match data::<
        sonora_proto::audio::v1::audio_generation_client::AudioGenerationClient<
            internal_rpc::PeerChannel,
        >,
    >(&req)
    {
        Ok(client) => {
            let mut text = String::from("limit=100");
            for (name, value) in [("status", &status), ("type", &job_type)] {
                if let Some(value) = value {
                    text.push_str(&format!(
                        "&{name}={}",
                        url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                    ));
                }
            }
            match query::<audio::ListQuery>(&text) {
                Ok(q) => api(audio::list_jobs(visitor.caller(), client, q).await).await,
                Err(problem) => Err(problem),
            }
        }
        Err(problem) => Err(problem),
    };
    let deliveries = event_deliveries(&req, &visitor, &listed).await;
    let body = html! {
        form.filter method="get" action="/console/audio" {
            label for="f-status" { "Status" }
            select #f-status name="status" {
                option value="" { "Any" }
                @for s in ["queued", "submitted", "processing", "succeeded", "failed", "canceled"] {
                    option value=(s) selected[status.as_deref() == Some(s)] { (s) }
                }
            }
            label for="f-type" { "Type" }
            select #f-type name="type" {
                option value="" { "Any" }
                @for t in ["sound_effect", "background_music"] {
                    option value=(t) selected[job_type.as_deref() == Some(t)] { (t) }
                }
            }
            button type="submit" { "Filter" }
        }
        @match &listed {
            Ok(page) => {
                @let jobs = rows(page, "jobs");
                @if jobs.is_empty() { p { "No audio jobs." } }
                @for job in &jobs {
                    @let job_id = text(&job["id"]);
                    @let status = text(&job["status"]);
                    article.job data-job=(job_id) data-status=(status) {
                        h2 { (text(&job["type"])) " " code { (job_id) } " " (badge(&status)) }
                        p { (text(&job["prompt"])) }
                        dl.details {
                            div { dt { "Prediction" } dd { (text(&job["prediction_id"])) } }
                            div { dt { "Duration asked" } dd { (text(&job["duration_seconds"])) " s" } }
                            @if let Some(error) = job["error"].as_str() { div { dt { "Error" } dd { (error) } } }
                        }
                        h3 { "Timeline" }
                        ol.timeline {
                            li { "Created " (when(&job["created_at"])) }
                            @if job["submitted_at"].is_string() { li { "Submitted to the model " (when(&job["submitted_at"])) " (prediction " (text(&job["prediction_id"])) ")" } }
                            @if job["completed_at"].is_string() { li { "The model's answer received " (when(&job["completed_at"])) } }
                            @if job["finished_at"].is_string() {
                                @if job["audio"].is_object() { li { "Audio stored " (when(&job["finished_at"])) } }
                                @else { li { "Ended " (when(&job["finished_at"])) " (" (status) ")" } }
                            }
                            @if let Some(event_id) = job["event_id"].as_str() {
                                li.event { "Event " code { (event_id) } ": " (event_summary(deliveries.get(event_id))) }
                            }
                        }
                        @if job["audio"].is_object() {
                            button type="button" data-play={ "/v1/audio-jobs/" (job_id) "/audio" } { "Play" }
                        }
                        @if matches!(status.as_str(), "queued" | "submitted" | "processing") {
                            button type="button" data-api={ "/v1/audio-jobs/" (job_id) } data-method="DELETE" data-done="Job canceled." { "Cancel" }
                        }
                    }
                }
                audio #job-audio controls hidden {}
            }
            Err(problem) => (failed(problem))
        }
    };
    layout(&visitor, "/console/audio", "Audio jobs", &[], body)
}

// --- Inbound webhooks -------------------------------------------------------------------------

pub(crate) async fn inbound(req: HttpRequest) -> HttpResponse {
    let visitor = signed_in!(req);
    let (sources, rules, events) = match data::<webhooks::IngestClient>(&req) {
        Ok(client) => (
            api(inbound::list_sources(visitor.caller(), client.clone()).await).await,
            api(inbound::list_routing_rules(visitor.caller(), client.clone()).await).await,
            api(inbound::list_events(
                visitor.caller(),
                client,
                web::Query(inbound::EventsQuery::recent(100)),
            )
            .await)
            .await,
        ),
        Err(problem) => (Err(problem.clone()), Err(problem.clone()), Err(problem)),
    };
    let body = html! {
        section aria-labelledby="sources" {
            h2 #sources { "Sources" }
            p { "A source receives Standard Webhooks at its path; its secret is shown once when it is made or rotated." }
            @match &sources {
                Ok(list) if rows(list, "data").is_empty() => p #no-sources { "No sources yet." }
                Ok(list) => {
                    table {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Path" } th scope="col" { "Created" } th scope="col" { "Rotated" } th scope="col" { span.sr-only { "Actions" } } } }
                        tbody {
                            @for s in rows(list, "data") {
                                @let name = text(&s["name"]);
                                tr {
                                    th scope="row" { (name) }
                                    td { code { (text(&s["path"])) } }
                                    td { (when(&s["created_at"])) }
                                    td { (when(&s["rotated_at"])) }
                                    td {
                                        button type="button" data-api={ "/v1/inbound/sources/" (name) "/secret/rotate" } data-method="POST" data-show="secret" data-into="source-secret" { "Rotate secret" }
                                        button type="button" data-api={ "/v1/inbound/sources/" (name) } data-method="DELETE" data-done="Source deleted." { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
            form data-api="/v1/inbound/sources" data-method="POST" data-show="secret" data-into="source-secret" data-done="Source created: copy its secret now, it is not shown again." #create-source {
                label for="source-name" { "New source name" }
                input #source-name name="name" type="text" required maxlength="64" pattern="[a-z0-9][a-z0-9-]*";
                div.actions { button type="submit" { "Create source" } }
            }
            output #source-secret aria-live="polite" {}
        }
        section aria-labelledby="rules" {
            h2 #rules { "Routing rules" }
            p { "Which events set off which actions. Rules are set by the operator (" code { "ROUTING_RULES" } " of webhook-ingest) and are read-only here; shown are the rules that hand events to this tenant's partner endpoints and those on its own sources." }
            @match &rules {
                Ok(list) if rows(list, "data").is_empty() => p #no-rules { "No routing rule concerns this tenant." }
                Ok(list) => {
                    table #routing-rules {
                        thead { tr { th scope="col" { "Rule" } th scope="col" { "Source" } th scope="col" { "Event type" } th scope="col" { "Also matching" } th scope="col" { "Actions" } th scope="col" { "Prompt" } } }
                        tbody {
                            @for r in rows(list, "data") {
                                @let event = match (r["event"].as_str(), r["action"].as_str()) {
                                    (None, None) => "every type".to_owned(),
                                    (Some(e), None) => format!("{e}.*"),
                                    (None, Some(a)) => format!("*.{a}"),
                                    (Some(e), Some(a)) => format!("{e}.{a}"),
                                };
                                @let filters = [("repository", &r["repository"]), ("label", &r["label"])]
                                    .into_iter()
                                    .filter_map(|(name, v)| v.as_str().map(|v| format!("{name} {v}")))
                                    .collect::<Vec<_>>();
                                tr {
                                    th scope="row" { (text(&r["name"])) }
                                    td { (text(&r["source"])) }
                                    td { code { (event) } }
                                    td { @if filters.is_empty() { "—" } @else { (filters.join(", ")) } }
                                    td.rule-actions {
                                        @for action in r["actions"].as_array().into_iter().flatten() {
                                            @let words = match action.as_str() {
                                                Some("publish") => "publish to partner endpoints".to_owned(),
                                                Some("agent_run") => "start an agent run".to_owned(),
                                                _ => text(action),
                                            };
                                            span.badge.ok { (words) } " "
                                        }
                                    }
                                    td.prompt { (text(&r["prompt"])) }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
        section aria-labelledby="inbox" {
            h2 #inbox { "Inbox" }
            div.actions {
                button type="button" data-api="/v1/inbound/dead-letters/redrive" data-method="POST" data-body="{}" data-done="Dead letters queued again." { "Redrive dead letters" }
            }
            @match &events {
                Ok(list) => {
                    @let events = rows(list, "data");
                    @if events.is_empty() { p { "No inbound events for this tenant." } }
                    @else {
                        table {
                            thead { tr { th scope="col" { "Received" } th scope="col" { "Source" } th scope="col" { "Type" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Last error" } } }
                            tbody {
                                @for e in &events {
                                    tr {
                                        td { (when(&e["received_at"])) }
                                        td { (text(&e["source"])) }
                                        td { (text(&e["event_type"])) }
                                        td { (badge(&text(&e["state"]))) }
                                        td { (text(&e["attempts"])) }
                                        td { (text(&e["last_error"])) }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(problem) => (failed(problem))
            }
        }
    };
    layout(&visitor, "/console/inbound", "Inbound webhooks", &[], body)
}
