//! `/v1/admin/api-keys` (a tenant's admins make, list and revoke its keys) and
//! `/v1/auth/verify` (what a key is).

use actix_web::{HttpResponse, http::StatusCode, web};
use chrono::{DateTime, Utc};
use http_problem::Problem;
use ids::KeyId;
use internal_rpc::{Scope, Scopes};
use serde::{Deserialize, Serialize};
use settings::ExposeSecret as _;
use utoipa::ToSchema;

use crate::{
    auth::{self, Authenticator, Caller},
    keys::{self, KeyRecord, NewKey},
    openapi::{self, tag},
    routes::resource,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/auth/verify", "GET").route(web::get().to(verify)))
        .service(
            resource("/v1/admin/api-keys", "GET, POST")
                .route(web::post().to(create))
                .route(web::get().to(list)),
        )
        .service(resource("/v1/admin/api-keys/{id}", "DELETE").route(web::delete().to(revoke)));
}

/// A key as the API shows it: never its hash, never the key (except once, on creation).
#[derive(Serialize, ToSchema)]
#[schema(as = Key)]
struct KeyBody {
    /// `key_…`.
    id: String,
    tenant: String,
    name: String,
    /// The key's prefix and first characters, to recognise it by: `cw_live_Ab12…`.
    display: String,
    /// Of `tts`, `audio`, `webhooks`, `usage`, `admin`.
    scopes: Vec<&'static str>,
    /// `free`, `standard` or `enterprise`: the rate limit and monthly quota.
    plan: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<&KeyRecord> for KeyBody {
    fn from(record: &KeyRecord) -> Self {
        Self {
            id: record.id.to_string(),
            tenant: record.tenant.to_string(),
            name: record.name.clone(),
            display: record.display(),
            scopes: record.scope_names(),
            plan: record.plan.clone(),
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            created_at: record.created_at,
        }
    }
}

/// What the calling key is.
///
/// Its tenant, name, scopes, plan and expiry; any valid key may ask.
#[utoipa::path(
    get,
    path = "/v1/auth/verify",
    tag = tag::KEYS,
    operation_id = "verify_key",
    responses((status = 200, description = "The calling key.", body = KeyBody)),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn verify(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(KeyBody::from(&caller.0))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateKey)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    /// Of `tts`, `audio`, `webhooks`, `usage`, `admin`.
    scopes: Vec<String>,
    /// The admin key's own plan when absent; never a higher one.
    #[serde(default)]
    plan: Option<String>,
    /// No expiry when absent.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    /// `cw_live_` when absent.
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = CreatedKey)]
struct CreatedBody {
    #[serde(flatten)]
    record: KeyBody,
    /// The key itself: shown this once, never again.
    key: String,
}

fn database_problem(error: &database::DatabaseError) -> Problem {
    tracing::warn!(%error, "key store failure");
    Problem::unavailable("The key store is not reachable right now; retry shortly.").retry_after(2)
}

/// A new key of the caller's tenant.
///
/// 201 with the key, shown this once and never again.
#[utoipa::path(
    post,
    path = "/v1/admin/api-keys",
    tag = tag::KEYS,
    operation_id = "create_api_key",
    request_body = CreateBody,
    responses(
        (status = 201, description = "The key, with the key itself.", body = CreatedBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 413, response = openapi::PayloadTooLarge),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn create(
    caller: Caller,
    authenticator: web::Data<Authenticator>,
    body: http_problem::JsonObject<CreateBody>,
) -> Result<HttpResponse, Problem> {
    let admin = caller.require(Scope::Admin)?;
    let body = body.0;
    let mut scopes = Vec::new();
    for name in &body.scopes {
        scopes.push(Scope::parse(name).ok_or_else(|| {
            Problem::invalid_request(format!(
                "scopes: {name:?} is not one of tts, audio, webhooks, usage, admin"
            ))
        })?);
    }
    let now = Utc::now();
    let new = NewKey {
        tenant: admin.tenant.clone(),
        name: body.name,
        prefix: body
            .prefix
            .unwrap_or_else(|| keys::DEFAULT_PREFIX.to_owned()),
        scopes: Scopes::of(scopes),
        plan: body.plan.unwrap_or_else(|| admin.plan.clone()),
        expires_at: body.expires_at,
    };
    new.check(now).map_err(Problem::invalid_request)?;
    if keys::plan_rank(&new.plan) > keys::plan_rank(&admin.plan) {
        return Err(Problem::invalid_request(format!(
            "plan: an admin key on the {} plan cannot make a key on a higher plan",
            admin.plan
        )));
    }
    let made = keys::make(authenticator.pepper(), &new, now);
    keys::insert(authenticator.pool(), &made.record)
        .await
        .map_err(|error| match error {
            keys::StoreError::Database(error) => database_problem(&error),
            keys::StoreError::UnknownTenant(_) => Problem::internal(),
        })?;
    tracing::info!(key_id = %made.record.id, tenant = %made.record.tenant, by = %admin.id, "API key created");
    Ok(HttpResponse::build(StatusCode::CREATED).json(CreatedBody {
        record: KeyBody::from(&made.record),
        key: made.key.expose_secret().to_owned(),
    }))
}

#[derive(Serialize, ToSchema)]
#[schema(as = Keys)]
struct KeysBody {
    keys: Vec<KeyBody>,
}

/// The tenant's keys, newest first.
///
/// Never the keys themselves.
#[utoipa::path(
    get,
    path = "/v1/admin/api-keys",
    tag = tag::KEYS,
    operation_id = "list_api_keys",
    responses(
        (status = 200, description = "The tenant's keys.", body = KeysBody),
        (status = 403, response = openapi::Forbidden),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
pub(crate) async fn list(
    caller: Caller,
    authenticator: web::Data<Authenticator>,
) -> Result<HttpResponse, Problem> {
    let admin = caller.require(Scope::Admin)?;
    let found = keys::list(authenticator.pool(), Some(&admin.tenant))
        .await
        .map_err(|e| database_problem(&e))?;
    Ok(HttpResponse::Ok().json(KeysBody {
        keys: found.iter().map(KeyBody::from).collect(),
    }))
}

/// Revokes a key of the tenant.
///
/// On every replica within a second, and the tokens made from it with it. Another tenant's key
/// is not found.
#[utoipa::path(
    delete,
    path = "/v1/admin/api-keys/{id}",
    tag = tag::KEYS,
    operation_id = "revoke_api_key",
    params(("id" = String, Path, description = "The key's id, `key_…`.")),
    responses(
        (status = 200, description = "The key, revoked.", body = KeyBody),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn revoke(
    caller: Caller,
    authenticator: web::Data<Authenticator>,
    redis: web::Data<deadpool_redis::Pool>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let admin = caller.require(Scope::Admin)?;
    let not_found =
        || Problem::not_found().detail("No API key with this id exists for this tenant.");
    let id = KeyId::parse(&id).map_err(|_| not_found())?;
    let revoked = keys::revoke(authenticator.pool(), Some(&admin.tenant), id, Utc::now())
        .await
        .map_err(|e| database_problem(&e))?
        .ok_or_else(not_found)?;
    authenticator.forget(&revoked.hash, Some(&revoked.id.to_string()));
    auth::publish_revoked(&redis, &revoked).await;
    tracing::info!(key_id = %revoked.id, by = %admin.id, "API key revoked");
    Ok(HttpResponse::Ok().json(KeyBody::from(&revoked)))
}
