//! `/v1/admin/api-keys` (a tenant's admins make, list and revoke its keys) and
//! `/v1/auth/verify` (what a key is).

use actix_web::{HttpResponse, http::StatusCode, web};
use chrono::{DateTime, Utc};
use http_problem::Problem;
use ids::KeyId;
use internal_rpc::{Scope, Scopes};
use serde::{Deserialize, Serialize};
use settings::ExposeSecret as _;

use crate::{
    auth::{self, Authenticator, Caller},
    keys::{self, KeyRecord, NewKey},
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
#[derive(Serialize)]
struct KeyBody {
    id: String,
    tenant: String,
    name: String,
    /// `cw_live_Ab12…`.
    display: String,
    scopes: Vec<&'static str>,
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

/// `GET /v1/auth/verify`: the calling key's tenant, name, scopes, plan and expiry.
async fn verify(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(KeyBody::from(&caller.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Serialize)]
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

/// `POST /v1/admin/api-keys`: a new key of the caller's tenant.
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

#[derive(Serialize)]
struct KeysBody {
    keys: Vec<KeyBody>,
}

/// `GET /v1/admin/api-keys`: the tenant's keys, newest first.
async fn list(
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

/// `DELETE /v1/admin/api-keys/{id}`: revokes a key of the tenant, on every replica within a
/// second. Another tenant's key is not found.
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
