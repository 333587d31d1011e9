//! The console: Sonora in a browser, served under `/console` when `CONSOLE_ENABLED`.
//!
//! Pages are rendered here, on the server, with `maud` (every inserted value is escaped), from
//! the same JSON the `/v1` API answers with: a page calls the API's handler functions in process
//! with the session's key as the [`Caller`], so the console shows exactly what the API would
//! (same tenant scoping, same scope checks, same validation) and never re-implements a rule.
//! Changes are made by two small scripts (`assets/console.js`, `assets/playground.js`) calling
//! the `/v1` API with the session cookie and the session's CSRF token in `x-csrf-token`
//! ([`session_caller`]); the cookie alone authenticates nothing on `/v1`.
//!
//! Why this CSRF design: the cookie is `SameSite=Strict` (another site's page cannot make the
//! browser send it), `/v1` takes it only together with a header that another origin cannot set
//! without a CORS preflight (which the gateway never grants for it), and that header must equal
//! the random token stored with the session. The classic forms of the console itself (sign-out)
//! carry the token in a hidden field. Sign-in has no session yet: it refuses posts that browsers
//! mark as coming from another site (`Sec-Fetch-Site`, `Origin`).

pub mod assets;
mod pages;
pub mod session;

use std::net::IpAddr;

use actix_web::{
    HttpRequest, HttpResponse,
    body::MessageBody as _,
    http::{StatusCode, header},
    web,
};
use http_problem::Problem;
use internal_rpc::Scope;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::{
    auth::{Authenticator, Caller, Refusal},
    keys::KeyRecord,
};
pub use session::{ConsoleSettings, Sessions};

/// The Content-Security-Policy of console pages: scripts, styles and fetches from the gateway
/// only, audio also from `blob:` (the playground's stream), nothing inline, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/console").route(web::get().to(pages::overview)))
        .service(
            web::resource("/console/sign-in")
                .route(web::get().to(sign_in_page))
                .route(web::post().to(sign_in)),
        )
        .service(web::resource("/console/sign-out").route(web::post().to(sign_out)))
        .service(web::resource("/console/endpoints").route(web::get().to(pages::endpoints)))
        .service(web::resource("/console/endpoints/{id}").route(web::get().to(pages::endpoint)))
        .service(web::resource("/console/playground").route(web::get().to(pages::playground)))
        .service(web::resource("/console/keys").route(web::get().to(pages::keys)))
        .service(web::resource("/console/audio").route(web::get().to(pages::audio)))
        .service(web::resource("/console/inbound").route(web::get().to(pages::inbound)))
        .service(web::resource("/console/assets/{name}").route(web::get().to(assets::serve)));
}

/// The key of a `/v1` request that carries the console's session cookie and its CSRF token;
/// `None` when it carries no such pair (then the request has no credential at all).
pub async fn session_caller(
    authenticator: &Authenticator,
    req: &HttpRequest,
) -> Option<Result<KeyRecord, Refusal>> {
    let sessions = req.app_data::<web::Data<Sessions>>()?;
    let csrf = req.headers().get(session::CSRF_HEADER)?.to_str().ok()?;
    let id = session::session_cookie(req)?;
    Some(match sessions.find(&id).await {
        Ok(Some(found)) if session::same_secret(&found.csrf, csrf) => {
            authenticator.authenticate_session(&found).await
        }
        Ok(_) => Err(Refusal::Session),
        Err(_) => Err(Refusal::Unavailable),
    })
}

/// A signed-in visitor of a page.
pub(crate) struct Visitor {
    pub session: session::Session,
    pub key: KeyRecord,
}

impl Visitor {
    pub fn caller(&self) -> Caller {
        Caller(self.key.clone())
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.key.scopes.contains(scope)
    }
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The visitor of a page, or the answer that sends them to sign in.
pub(crate) async fn visitor(req: &HttpRequest) -> Result<Visitor, HttpResponse> {
    let sessions = req
        .app_data::<web::Data<Sessions>>()
        .ok_or_else(|| Problem::not_found().to_response())?;
    let authenticator = req
        .app_data::<web::Data<Authenticator>>()
        .ok_or_else(|| Problem::internal().to_response())?;
    let Some(id) = session::session_cookie(req) else {
        return Err(redirect("/console/sign-in"));
    };
    let found = sessions
        .find(&id)
        .await
        .map_err(|problem| problem.to_response())?;
    let Some(found) = found else {
        return Err(redirect("/console/sign-in?ended=1"));
    };
    match authenticator.authenticate_session(&found).await {
        Ok(key) => Ok(Visitor {
            session: found,
            key,
        }),
        Err(Refusal::Unavailable) => Err(Problem::from(Refusal::Unavailable).to_response()),
        Err(_) => {
            let _ = sessions.end(&id).await;
            Err(redirect("/console/sign-in?ended=1"))
        }
    }
}

/// An answer of the API's handler as JSON (or its problem).
pub(crate) async fn api(answer: Result<HttpResponse, Problem>) -> Result<Value, Problem> {
    let response = answer?;
    let status = response.status();
    let bytes = response
        .into_body()
        .try_into_bytes()
        .unwrap_or_else(|_| web::Bytes::new());
    if !status.is_success() {
        return Err(Problem::bad_gateway("The API answered with an error."));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|_| Problem::internal())
}

/// A page of the console with its headers: its own CSP, never cached.
pub(crate) fn page_response(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        // The console's own requests carry their origin (Origin is "null" under no-referrer);
        // nothing is sent to other sites.
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// The navigation: (path, label, scope needed).
const NAV: &[(&str, &str, Option<Scope>)] = &[
    ("/console", "Overview", None),
    (
        "/console/endpoints",
        "Partner endpoints",
        Some(Scope::Webhooks),
    ),
    (
        "/console/playground",
        "Voices & playground",
        Some(Scope::Tts),
    ),
    ("/console/audio", "Audio jobs", Some(Scope::Audio)),
    (
        "/console/inbound",
        "Inbound webhooks",
        Some(Scope::Webhooks),
    ),
    ("/console/keys", "API keys & usage", Some(Scope::Admin)),
];

/// A whole page around `body`, for a signed-in visitor.
pub(crate) fn layout(
    visitor: &Visitor,
    active: &str,
    title: &str,
    scripts: &[&str],
    body: Markup,
) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(visitor.session.csrf);
                title { (title) " · Sonora console" }
                link rel="stylesheet" href=(assets::url("console.css"));
                script src=(assets::url("console.js")) defer {}
                @for script in scripts {
                    script src=(assets::url(script)) defer {}
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Sonora" }
                    span.who {
                        "Tenant " strong #tenant { (visitor.key.tenant) }
                        " · key " code { (visitor.key.display()) }
                        " · scopes " (visitor.key.scope_names().join(", "))
                    }
                    form.signout method="post" action="/console/sign-out" {
                        input type="hidden" name=(session::CSRF_FIELD) value=(visitor.session.csrf);
                        button type="submit" #sign-out { "Sign out" }
                    }
                }
                nav aria-label="Console" {
                    ul {
                        @for (path, label, scope) in NAV {
                            @if scope.is_none_or(|s| visitor.has(s)) {
                                li {
                                    @if *path == active {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    div.flash role="alert" aria-live="assertive" #flash hidden {}
                    (body)
                }
            }
        }
    };
    page_response(StatusCode::OK, markup)
}

#[derive(serde::Deserialize)]
pub(crate) struct SignInQuery {
    #[serde(default)]
    ended: Option<String>,
}

fn sign_in_markup(message: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Sonora console" }
                link rel="stylesheet" href=(assets::url("console.css"));
            }
            body.signin {
                main #main {
                    h1 { "Sonora console" }
                    p { "Sign in with an API key. The console then holds a short session; the key is not kept in the browser." }
                    @if let Some(message) = message {
                        p.error role="alert" #sign-in-error { (message) }
                    }
                    form method="post" action="/console/sign-in" {
                        label for="key" { "API key" }
                        input #key type="password" name="key" autocomplete="off" required
                            spellcheck="false" aria-describedby="key-help";
                        p.help #key-help { "For example cw_live_…; it decides the tenant and what you may do." }
                        button type="submit" #sign-in { "Sign in" }
                    }
                }
            }
        }
    }
}

async fn sign_in_page(query: web::Query<SignInQuery>) -> HttpResponse {
    let message = query
        .ended
        .as_ref()
        .map(|_| "Your session has ended; sign in again.");
    page_response(StatusCode::OK, sign_in_markup(message))
}

/// The largest form the console takes (a key is at most 256 characters).
const MAX_FORM_BYTES: usize = 4096;

/// A form's body, at most [`MAX_FORM_BYTES`] (413 beyond).
async fn read_form(mut payload: web::Payload) -> Result<Vec<u8>, Problem> {
    use futures::StreamExt as _;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Problem::invalid_request("the form could not be read"))?;
        if body.len() + chunk.len() > MAX_FORM_BYTES {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload Too Large",
            )
            .detail(format!("A console form is at most {MAX_FORM_BYTES} bytes.")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A field of a form body (`application/x-www-form-urlencoded`); read leniently, so a malformed
/// body is simply a missing field.
fn form_field(body: &[u8], name: &str) -> String {
    url::form_urlencoded::parse(body)
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

fn client_ip(req: &HttpRequest) -> IpAddr {
    let limiter = req.app_data::<web::Data<crate::ratelimit::Limiter>>();
    let peer = req.peer_addr().map(|a| a.ip());
    limiter
        .and_then(|l| {
            l.client_ip(
                peer,
                req.headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok()),
            )
        })
        .or(peer)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// `POST /console/sign-in` (form): the key is checked like any API key, then a session starts.
#[tracing::instrument(skip_all)]
async fn sign_in(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    authenticator: web::Data<Authenticator>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match read_form(payload).await {
        Ok(form) => form,
        Err(problem) => return problem.to_response(),
    };
    if !session::same_site_post(&req) {
        return page_response(
            StatusCode::FORBIDDEN,
            sign_in_markup(Some("Sign-in must come from the console's own page.")),
        );
    }
    match sessions.admit_sign_in(client_ip(&req)).await {
        Ok(true) => {}
        Ok(false) => {
            let mut response = page_response(
                StatusCode::TOO_MANY_REQUESTS,
                sign_in_markup(Some(
                    "Too many sign-in attempts from this address; wait a minute and try again.",
                )),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(session::SIGN_IN_WINDOW.as_secs()),
            );
            return response;
        }
        Err(problem) => return problem.to_response(),
    }
    let key = form_field(&form, "key");
    let key = key.trim();
    // Tokens are for programs; the console takes keys.
    if key.is_empty() || crate::token::looks_like_token(key) {
        return page_response(
            StatusCode::UNAUTHORIZED,
            sign_in_markup(Some("Enter an API key.")),
        );
    }
    let record = match authenticator.authenticate(key).await {
        Ok(record) => record,
        Err(Refusal::Unavailable) => {
            return page_response(
                StatusCode::SERVICE_UNAVAILABLE,
                sign_in_markup(Some("Keys cannot be checked right now; retry shortly.")),
            );
        }
        Err(refusal) => {
            let message = match refusal {
                Refusal::Revoked => "This API key has been revoked.",
                Refusal::Expired => "This API key has expired.",
                _ => "This API key is not valid.",
            };
            tracing::info!("console sign-in refused");
            return page_response(StatusCode::UNAUTHORIZED, sign_in_markup(Some(message)));
        }
    };
    match sessions.create(&record).await {
        Ok((id, _)) => {
            tracing::info!(key = %record.id, tenant = %record.tenant, "console sign-in");
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console"))
                .insert_header((header::SET_COOKIE, sessions.cookie(&id)))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        Err(problem) => problem.to_response(),
    }
}

/// `POST /console/sign-out` (form with the CSRF token): ends the session at once.
async fn sign_out(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match read_form(payload).await {
        Ok(form) => form,
        Err(problem) => return problem.to_response(),
    };
    let csrf = form_field(&form, session::CSRF_FIELD);
    let Some(id) = session::session_cookie(&req) else {
        return redirect("/console/sign-in");
    };
    match sessions.find(&id).await {
        Ok(Some(found)) if session::same_secret(&found.csrf, &csrf) => {
            if let Err(problem) = sessions.end(&id).await {
                return problem.to_response();
            }
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/sign-in"))
                .insert_header((header::SET_COOKIE, sessions.clear_cookie()))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        Ok(Some(_)) => session::csrf_refused().to_response(),
        Ok(None) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/console/sign-in"))
            .insert_header((header::SET_COOKIE, sessions.clear_cookie()))
            .finish(),
        Err(problem) => problem.to_response(),
    }
}
