//! Replicate's HTTP API, as far as Sonora uses it: predictions, the webhook secret and the
//! output files. Errors are Replicate's `{"title", "detail", "status"}` objects, not
//! problem+json, because clients written for Replicate read `detail`.

use std::{future::Ready, sync::Arc, time::Duration};

use actix_web::{
    FromRequest, HttpRequest, HttpResponse, ResponseError,
    body::SizedStream,
    http::{StatusCode, header},
    web,
};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    prediction::{InputError, ModelRef, PredictionId, parse_cancel_after},
    settings::{DownloadFailure, KnobsHandle},
    simulator::{NewPrediction, Refusal, Simulator},
    store::{Cursor, Filter},
};

/// The largest creation body read; inputs are a few fields.
const BODY_LIMIT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("You did not pass a valid authentication token")]
    Unauthenticated,
    #[error("Not found.")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(#[from] InputError),
    #[error("Request was throttled. Expected available in {0} seconds.")]
    Throttled(u64),
    #[error("The file could not be read (simulated by SIMULATOR_DOWNLOAD_FAILURES).")]
    BrokenDownload,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BrokenDownload => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let title = match self {
            Self::Unauthenticated => "Unauthenticated",
            Self::NotFound => "Not found",
            Self::BadRequest(_) => "Bad request",
            Self::Invalid(_) => "Input validation failed",
            Self::Throttled(_) => "Request was throttled",
            Self::BrokenDownload => "Internal server error",
        };
        let mut response = HttpResponse::build(status);
        if let Self::Throttled(seconds) = self {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(json!({
            "title": title,
            "detail": self.to_string(),
            "status": status.as_u16(),
        }))
    }
}

/// Proof that the request carried the accepted bearer token; handlers that take it are closed
/// to everyone else.
pub struct Authorized;

/// The token the API accepts, as app data.
pub struct ApiToken(pub SecretString);

/// Compares without stopping at the first difference, so timing tells nothing of the token but
/// its length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<ApiToken>>()
            .expect("the API token is app data");
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // `Token` is the older scheme Replicate's docs and clients used; old clients send it.
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("Token "))
            })
            .unwrap_or_default();
        std::future::ready(
            if !given.is_empty() && same(given.as_bytes(), expected.0.expose_secret().as_bytes()) {
                Ok(Authorized)
            } else {
                Err(ApiError::Unauthenticated)
            },
        )
    }
}

type Sim = web::Data<Arc<Simulator>>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .route("/predictions", web::post().to(create))
            .route("/predictions", web::get().to(list))
            .route("/predictions/{id}", web::get().to(get))
            .route("/predictions/{id}/cancel", web::post().to(cancel))
            .route(
                "/models/{owner}/{name}/predictions",
                web::post().to(create_for_model),
            )
            .route("/webhooks/default/secret", web::get().to(secret)),
    )
    .route("/files/{name}", web::get().to(download))
    .route("/p/{id}", web::get().to(page))
    .app_data(web::PayloadConfig::new(BODY_LIMIT));
}

/// The fallback for unknown paths, in Replicate's shape.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest(
            "The body must be a JSON object.".to_owned(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "The body is not valid JSON: {e}"
        ))),
    }
}

/// `Prefer: wait` (60 s) or `Prefer: wait=n` (1 to 60 s); anything else waits for nothing.
fn prefer_wait(req: &HttpRequest) -> Option<Duration> {
    let prefer = req.headers().get("prefer")?.to_str().ok()?;
    prefer.split(',').map(str::trim).find_map(|pref| {
        if pref == "wait" {
            Some(Duration::from_secs(60))
        } else {
            let seconds: u64 = pref.strip_prefix("wait=")?.trim().parse().ok()?;
            Some(Duration::from_secs(seconds.clamp(1, 60)))
        }
    })
}

/// Creates the prediction with the options the request's headers carry, and answers 201 once
/// it exists, or once it has finished within `Prefer: wait`.
async fn created(
    sim: &Arc<Simulator>,
    req: &HttpRequest,
    mut new: NewPrediction,
) -> Result<HttpResponse, ApiError> {
    new.cancel_after = match req.headers().get("cancel-after") {
        None => None,
        Some(value) => Some(parse_cancel_after(value.to_str().unwrap_or_default())?),
    };
    let mut prediction = sim.create(new).map_err(|refusal| match refusal {
        Refusal::RateLimited(seconds) => ApiError::Throttled(seconds),
    })?;
    if let Some(limit) = prefer_wait(req) {
        prediction = sim
            .wait_for(&prediction.id, limit)
            .await
            .unwrap_or(prediction);
    }
    let body = prediction.to_json(&sim.base_url);
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("{}/v1/predictions/{}", sim.base_url, prediction.id),
        ))
        .json(body))
}

#[tracing::instrument(skip_all)]
async fn create(
    _: Authorized,
    sim: Sim,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = object(&body)?;
    let version = body
        .get("version")
        .and_then(Value::as_str)
        .ok_or(InputError {
            field: "version",
            problem: "is required and must be a string".to_owned(),
        })?;
    let new = NewPrediction::parse(ModelRef::from_version(version)?, &body)?;
    created(&sim, &req, new).await
}

#[tracing::instrument(skip_all, fields(owner = %path.0, name = %path.1))]
async fn create_for_model(
    _: Authorized,
    sim: Sim,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = object(&body)?;
    let new = NewPrediction::parse(ModelRef::from_path(&path.0, &path.1)?, &body)?;
    created(&sim, &req, new).await
}

fn prediction_id(raw: &str) -> Result<PredictionId, ApiError> {
    // A malformed id cannot name a prediction: Replicate answers 404 for it too.
    PredictionId::parse(raw).ok_or(ApiError::NotFound)
}

#[tracing::instrument(skip_all, fields(prediction_id = %id))]
async fn get(_: Authorized, sim: Sim, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let prediction = sim
        .store
        .get(&prediction_id(&id)?)
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(prediction.to_json(&sim.base_url)))
}

#[tracing::instrument(skip_all, fields(prediction_id = %id))]
async fn cancel(_: Authorized, sim: Sim, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let prediction = sim.cancel(&prediction_id(&id)?).ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(prediction.to_json(&sim.base_url)))
}

#[derive(Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
}

/// An ISO 8601 time with its offset, as the listing's filters take it.
fn listing_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "{name} must be an ISO 8601 time such as 2024-01-31T12:00:00Z."
                ))
            })
    })
    .transpose()
}

async fn list(
    _: Authorized,
    sim: Sim,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let cursor = match &query.cursor {
        None => None,
        Some(raw) => Some(
            Cursor::parse(raw).ok_or_else(|| ApiError::BadRequest("Invalid cursor.".to_owned()))?,
        ),
    };
    let filter = Filter {
        created_after: listing_time("created_after", query.created_after.as_deref())?,
        created_before: listing_time("created_before", query.created_before.as_deref())?,
    };
    let page = sim.store.list(cursor, sim.page_size, &filter);
    // The cursor links keep the filters, so that following them pages through the same set.
    let mut filters = String::new();
    for (name, value) in [
        ("created_after", &query.created_after),
        ("created_before", &query.created_before),
    ] {
        if let Some(value) = value {
            let value = url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
            filters.push_str(&format!("&{name}={value}"));
        }
    }
    let link = |cursor: Option<Cursor>| {
        cursor.map(|c| {
            format!(
                "{}/v1/predictions?cursor={}{filters}",
                sim.base_url,
                c.encode()
            )
        })
    };
    let results: Vec<Value> = page
        .results
        .iter()
        .map(|p| p.to_json(&sim.base_url))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "next": link(page.next),
        "previous": link(page.previous),
        "results": results,
    })))
}

async fn secret(_: Authorized, sim: Sim) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "key": sim.secret.expose() }))
}

/// An output file. Like `replicate.delivery`, it needs no token: the URL is the capability.
#[tracing::instrument(skip_all, fields(file = %name))]
async fn download(
    sim: Sim,
    knobs: web::Data<KnobsHandle>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let knobs = knobs.get();
    let (id, ext) = name.split_once('.').ok_or(ApiError::NotFound)?;
    let id = prediction_id(id)?;
    if !knobs.download_delay.is_zero() {
        tokio::time::sleep(knobs.download_delay).await;
    }
    let (file, number) = sim.store.download(&id).ok_or(ApiError::NotFound)?;
    if ext != file.format.name() {
        return Err(ApiError::NotFound);
    }
    if number <= knobs.download_failures {
        tracing::info!(download = number, "failed a download on purpose");
        sim.metrics.download("broken");
        if knobs.download_failure == DownloadFailure::Cut {
            let half = web::Bytes::copy_from_slice(&file.bytes[..file.bytes.len() / 2]);
            let cut = futures::stream::iter([
                Ok(half),
                Err(std::io::Error::other("the download is cut on purpose")),
            ]);
            return Ok(HttpResponse::Ok()
                .content_type(file.format.content_type())
                .body(SizedStream::new(file.bytes.len() as u64, cut)));
        }
        return Err(ApiError::BrokenDownload);
    }
    sim.metrics.download("served");
    Ok(HttpResponse::Ok()
        .content_type(file.format.content_type())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(file.bytes.as_ref().clone()))
}

/// The prediction's web page (`urls.web`): on Replicate a page for a signed-in user, here a plain
/// one for whoever holds the id, with the audio to listen to while developing.
#[tracing::instrument(skip_all, fields(prediction_id = %id))]
async fn page(sim: Sim, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let prediction = sim
        .store
        .get(&prediction_id(&id)?)
        .ok_or(ApiError::NotFound)?;
    let status = serde_json::to_value(prediction.status).unwrap_or_default();
    let status = status.as_str().unwrap_or_default();
    // Every interpolated value is ours: the id is base32, the model name was parsed to
    // `[A-Za-z0-9._-/]`, the status a word, the output our own URL.
    let audio = prediction
        .output
        .as_deref()
        .map(|url| format!("<p><audio controls src=\"{url}\"></audio></p>"))
        .unwrap_or_default();
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><title>{id}</title><h1>{model}</h1><p>{id}: {status}</p>{audio}",
            id = prediction.id,
            model = prediction.model.model,
        )))
}
