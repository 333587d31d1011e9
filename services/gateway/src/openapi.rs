//! The API's OpenAPI 3.1 document, `GET /openapi.json`, and `GET /docs`, a page that renders it.
//!
//! The document is generated from the code: each handler's `#[utoipa::path]` (method, path,
//! parameters, bodies, answers, security; its doc comment's first line is the summary, the rest
//! the description) and the `ToSchema` derives of the bodies, so a field added to a body is
//! documented by the same change. What every `/v1` route answers because of what stands in front
//! of its handler (401 from the key check, 429 from the rate limiter with its headers, 503 when
//! keys or limits cannot be checked) is added to each of them here, once, by [`Conventions`], so
//! a new route cannot leave it out; `/health`, served by `lifecycle`, is added there too.
//!
//! The page (`openapi/docs.{html,js,css}`, embedded in the binary) is the gateway's own: no
//! outside CDN, and no inline script or style, so it runs under a strict Content-Security-Policy
//! of its own (`script-src 'self'`, `connect-src 'self'` for the one fetch of the document).
//! Neither route needs a key, and neither is rate limited (the limiter sees only `/v1/`): they
//! describe the API, they do not serve it.

use std::sync::LazyLock;

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, HeaderValue},
    web,
};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToResponse, ToSchema,
    openapi::{
        Content, HttpMethod, Ref, RefOr, Response, ResponseBuilder, Schema,
        header::HeaderBuilder,
        path::OperationBuilder,
        schema::{KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::routes::resource;

/// The security scheme of a key sent as `x-api-key` (what the old clients send).
pub const API_KEY: &str = "api_key";
/// The security scheme of a key, or a token made from one, sent as `Authorization: Bearer`.
pub const BEARER: &str = "bearer";

/// The tags operations are grouped by, in the order the page shows them.
pub mod tag {
    pub const SPEECH: &str = "speech";
    pub const VOICES: &str = "voices";
    pub const KEYS: &str = "keys";
    pub const USAGE: &str = "usage";
    pub const AUDIO_JOBS: &str = "audio jobs";
    pub const PARTNER_WEBHOOKS: &str = "partner webhooks";
    pub const INBOUND_WEBHOOKS: &str = "inbound webhooks";
    pub const SERVICE: &str = "service";
}

/// The document: every public handler, and the reusable answers they refer to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sonora",
        version = env!("CARGO_PKG_VERSION"),
        description = "The public HTTP API of Sonora, a self-hostable voice and webhook platform: \
            speech synthesis and its voice catalogue, sound-effect and music jobs, API keys and \
            usage, partner webhook endpoints and inbound webhook sources.\n\n\
            Every `/v1` route needs an API key of a tenant (or a token made from one with \
            `POST /v1/auth/token`), sent as `x-api-key` or `Authorization: Bearer`, and some \
            need a scope on it. Every `/v1` request is rate limited per key and per client \
            address: every answer carries `RateLimit` and `RateLimit-Policy`, and a refusal is \
            429 with `Retry-After`. Errors are problem details (RFC 9457), \
            `application/problem+json`."
    ),
    paths(
        crate::routes::tts,
        crate::openai::audio_speech,
        crate::voices::list_voices,
        crate::admin::verify,
        crate::token::exchange,
        crate::admin::create,
        crate::admin::list,
        crate::admin::revoke,
        crate::usage::usage,
        crate::audio::create_sound_effect,
        crate::audio::create_background_music,
        crate::audio::list_jobs,
        crate::audio::get_job,
        crate::audio::cancel_job,
        crate::audio::read_audio,
        crate::audio::event_types,
        crate::webhooks::create_endpoint,
        crate::webhooks::list_endpoints,
        crate::webhooks::get_endpoint,
        crate::webhooks::update_endpoint,
        crate::webhooks::delete_endpoint,
        crate::webhooks::get_secret,
        crate::webhooks::rotate_secret,
        crate::webhooks::list_deliveries,
        crate::webhooks::list_attempts,
        crate::webhooks::retry_delivery,
        crate::webhooks::redrive,
        crate::webhooks::send_test,
        crate::inbound::create_source,
        crate::inbound::list_sources,
        crate::inbound::delete_source,
        crate::inbound::rotate_source_secret,
        crate::inbound::list_events,
        crate::inbound::get_event,
        crate::inbound::redrive,
        crate::inbound::list_webhook_alerts,
        crate::inbound::list_routing_rules,
        crate::telephony::calls::say,
        crate::telephony::calls::clear,
    ),
    components(responses(
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnprocessableEntity,
        TooManyRequests,
        BadGateway,
        ServiceUnavailable,
    )),
    modifiers(&Conventions),
    tags(
        (name = tag::SPEECH, description = "Speech synthesis, streamed as it is made (`tts` scope)."),
        (name = tag::VOICES, description = "The voice catalogue speech is made with."),
        (name = tag::KEYS, description = "What a key is, short-lived tokens made from keys, and a tenant's keys (`admin` scope)."),
        (name = tag::USAGE, description = "Requests, characters, seconds of audio and jobs per key and day, and the monthly character quota (`usage` scope)."),
        (name = tag::AUDIO_JOBS, description = "Sound effects and background music, made as jobs, and their audio (`audio` scope)."),
        (name = tag::PARTNER_WEBHOOKS, description = "The events partners receive, their webhook endpoints, secrets, deliveries and attempts (`webhooks` scope)."),
        (name = tag::INBOUND_WEBHOOKS, description = "Inbound webhook sources, the events routed to the tenant, their failure alerts and the routing rules that concern it (`admin` and `webhooks` scopes)."),
        (name = tag::SERVICE, description = "The service itself, for monitors; no key needed."),
    )
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/openapi.json", "GET").route(web::get().to(document)))
        .service(resource("/docs", "GET").route(web::get().to(page)))
        .service(resource("/docs/docs.js", "GET").route(web::get().to(script)))
        .service(resource("/docs/docs.css", "GET").route(web::get().to(style)));
}

// --- Schemas and answers the handlers share ---------------------------------------------------

// This mirrors `http_problem::Problem`'s wire form, since that crate does not depend on utoipa
// (and the orphan rule keeps the derive out of here); the gateway's tests check a real problem
// against it.
/// The body of every refusal and error: a problem detail (RFC 9457), served as
/// `application/problem+json`. Some problems add members of their own: `limit_chars`,
/// `limit_bytes`, `limit` (`key` or `ip`), `quota_characters`, `used_characters`, `resets_at`.
#[derive(ToSchema)]
#[schema(as = Problem)]
pub struct ProblemSchema {
    /// What kind of problem, as a URI reference: `/problems/invalid-request`,
    /// `/problems/unauthorized`, `/problems/rate-limited`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, human-readable summary of the kind.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, naming the field and the rule when a field broke one.
    pub detail: Option<String>,
}

/// Bytes of audio, in the format the answer's `Content-Type` names.
pub struct AudioBytes;

impl PartialSchema for AudioBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some(
                "Bytes of audio, in the format the answer's Content-Type names.",
            ))
            .into()
    }
}

impl ToSchema for AudioBytes {}

fn problem_content() -> Content {
    Content::new(Some(Ref::from_schema_name(ProblemSchema::name())))
}

fn integer_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some(description))
        .build()
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

/// A reusable problem answer, `$ref`-ed by the handlers as `response = NotFound` and so on.
macro_rules! problem_response {
    ($name:ident, $description:literal $(, $header:literal => $header_fn:ident($header_description:literal))* $(,)?) => {
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let response = ResponseBuilder::new()
                    .description($description)
                    .content(http_problem::CONTENT_TYPE, problem_content())
                    $(.header($header, $header_fn($header_description)))*
                    .build();
                (stringify!($name), response.into())
            }
        }
    };
}

problem_response!(
    BadRequest,
    "The request is not valid: a field, a parameter or the body broke a rule, which the detail names."
);
problem_response!(
    Unauthorized,
    "No API key or token, or one that is not valid, revoked or expired."
);
problem_response!(
    Forbidden,
    "The key lacks the scope this route needs, or the action is not the tenant's to take."
);
problem_response!(
    NotFound,
    "Nothing with this id exists for the caller's tenant (another tenant's is not found either)."
);
problem_response!(
    Conflict,
    "The request conflicts with the resource's state, which the detail names."
);
problem_response!(
    PayloadTooLarge,
    "The body is larger than the route accepts; its `limit_bytes` says how large it may be."
);
problem_response!(
    UnprocessableEntity,
    "The text is in a script the voice cannot read."
);
problem_response!(
    TooManyRequests,
    "A rate limit (of the key or of the client address) is reached, or, for speech, the key's monthly character quota or synthesis capacity.",
    "Retry-After" => integer_header("Seconds to wait before retrying."),
    "RateLimit" => string_header("What is left of each limit and when it is whole again: `\"key\";r=0;t=2, \"ip\";r=150;t=1` (remaining requests, seconds to reset)."),
    "RateLimit-Policy" => string_header("Each limit: `\"key\";q=10;w=2, \"ip\";q=200;w=2` (requests allowed in a burst, seconds the window lasts)."),
);
problem_response!(
    BadGateway,
    "A service behind the gateway failed to answer; the failure is logged, not described."
);
problem_response!(
    ServiceUnavailable,
    "Something this request needs (the key store, the rate limiter, a service behind the gateway) is not available right now.",
    "Retry-After" => integer_header("Seconds to wait before retrying."),
);

/// What every `/v1` route answers by the middleware and extractors in front of its handler,
/// the security schemes, `/health`, and two corrections of how utoipa writes `Option`.
pub struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "An API key of the tenant, such as `cw_live_…`.",
            ))),
        );
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key or access token")
                    .description(Some(
                        "An API key, or an access token (a JWT of at most 15 minutes) made from \
                         one with `POST /v1/auth/token`.",
                    ))
                    .build(),
            ),
        );
        let every_route = [
            ("401", Unauthorized::response().0),
            ("429", TooManyRequests::response().0),
            ("503", ServiceUnavailable::response().0),
        ];
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                optional_body_left_out(operation);
                absent_parameters_not_null(operation);
                for (status, name) in every_route {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                }
            }
        }
        openapi
            .paths
            .add_path_operation("/health", vec![HttpMethod::Get], health());
    }
}

/// utoipa writes a body declared `Option<T>` as required-unless-null (`oneOf: [null, T]`); these
/// routes read an empty body as the defaults and refuse JSON `null`, so the body is `T` and not
/// required.
fn optional_body_left_out(operation: &mut utoipa::openapi::path::Operation) {
    let Some(body) = operation.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let mut items = one_of.items.iter().filter(|item| !is_null(item));
        if let (Some(only), None) = (items.next(), items.next()) {
            content.schema = Some(only.clone());
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// utoipa writes a parameter declared `Option<T>` as `T` or `null`; a parameter is text in a URL
/// or a header and never JSON null (a client leaves it out), so it is `T`, not required.
fn absent_parameters_not_null(operation: &mut utoipa::openapi::path::Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut()
            && let SchemaType::Array(types) = &object.schema_type
            && types.contains(&Type::Null)
        {
            let types: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            if let [only] = types.as_slice() {
                object.schema_type = SchemaType::Type(only.clone());
            }
        }
    }
}

fn is_null(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(object))
        if object.schema_type == SchemaType::Type(Type::Null))
}

/// `GET /health`, served by `lifecycle` on every service's public port.
fn health() -> utoipa::openapi::path::Operation {
    let components = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::Boolean)))
        .description(Some(
            "One boolean per component (`database`, `redis`, `tts_model`, …) as the last \
             readiness check saw it.",
        ));
    let body = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["healthy", "degraded"])),
        )
        .required("status")
        .property(
            "timestamp",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .required("timestamp")
        .property("components", components)
        .required("components");
    OperationBuilder::new()
        .tag(tag::SERVICE)
        .operation_id(Some("health"))
        .summary(Some("Whether the process runs."))
        .description(Some(
            "200 while the process runs, whatever its dependencies do, with the old TTS API's \
             body for its monitors. It runs no check: the components are as the last readiness \
             check saw them.",
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The process runs.")
                .content("application/json", Content::new(Some(body))),
        )
        .build()
}

// --- Serving ----------------------------------------------------------------------------------

/// What the docs routes serve under: the page's script, style and one fetch of the document from
/// this origin only, nothing inline, and no framing.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One file these routes serve, made once, with its validator.
struct Asset {
    body: web::Bytes,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: web::Bytes, content_type: &'static str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            etag: format!("\"{hex}\""),
            body,
            content_type,
        }
    }

    /// The file, or 304 when the client's copy is current. Cacheable for five minutes, then
    /// revalidated: a new gateway version may document a different API.
    fn serve(&self, req: &HttpRequest) -> HttpResponse {
        let current = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .map(|t| t.trim().trim_start_matches("W/"))
                    .any(|t| t == "*" || t == self.etag)
            });
        let mut response = if current {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        response
            .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
            .insert_header((header::ETAG, self.etag.as_str()));
        if self.content_type != "application/json" {
            response.insert_header((
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            ));
        }
        if current {
            return response.finish();
        }
        response
            .content_type(self.content_type)
            .body(self.body.clone())
    }
}

static DOCUMENT: LazyLock<Asset> = LazyLock::new(|| {
    let json = ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes");
    Asset::new(web::Bytes::from(json), "application/json")
});
static PAGE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        web::Bytes::from_static(include_str!("openapi/docs.html").as_bytes()),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        web::Bytes::from_static(include_str!("openapi/docs.js").as_bytes()),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        web::Bytes::from_static(include_str!("openapi/docs.css").as_bytes()),
        "text/css; charset=utf-8",
    )
});

/// `GET /openapi.json`: the document (no key needed).
async fn document(req: HttpRequest) -> HttpResponse {
    DOCUMENT.serve(&req)
}

/// `GET /docs`: the page that renders the document.
async fn page(req: HttpRequest) -> HttpResponse {
    PAGE.serve(&req)
}

async fn script(req: HttpRequest) -> HttpResponse {
    SCRIPT.serve(&req)
}

async fn style(req: HttpRequest) -> HttpResponse {
    STYLE.serve(&req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_builds_and_names_this_version() {
        let document: serde_json::Value = serde_json::from_slice(&DOCUMENT.body).expect("JSON");
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1."));
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
