//! Usage metering: requests, characters synthesized, seconds of audio produced and jobs created,
//! per key and UTC day, and `GET /v1/usage`.
//!
//! A request only adds to counters in this replica's memory; a background task writes them to
//! PostgreSQL (`usage_daily`) in one statement every `USAGE_FLUSH_INTERVAL` (5 s by default), and
//! once more at shutdown. Metering therefore never slows a request; a replica killed without
//! warning loses at most one interval of counts. A flush that fails keeps its counts for the
//! next one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{HttpResponse, web};
use chrono::{Datelike as _, NaiveDate, Utc};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Date, Double, Nullable, Text},
};
use diesel_async::RunQueryDsl as _;
use http_problem::Problem;
use ids::KeyId;
use internal_rpc::Scope;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::Caller,
    keys::KeyRecord,
    openapi::{self, tag},
    ratelimit::Limiter,
    routes::resource,
};

/// What one request (or several) used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub requests: i64,
    pub characters: i64,
    pub audio_seconds: f64,
    pub jobs: i64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.characters += other.characters;
        self.audio_seconds += other.audio_seconds;
        self.jobs += other.jobs;
    }
}

type Slot = (String, KeyId, NaiveDate);

/// Counts waiting to be written; cheap to clone.
#[derive(Clone, Default)]
pub struct Meter {
    pending: Arc<Mutex<HashMap<Slot, Counts>>>,
}

/// Slots kept at most while PostgreSQL is away; beyond, new counts are dropped (and logged).
const MAX_PENDING: usize = 100_000;

impl Meter {
    /// Adds what `key` used today.
    pub fn record(&self, key: &KeyRecord, counts: Counts) {
        let slot = (key.tenant.to_string(), key.id, Utc::now().date_naive());
        let mut pending = self.pending.lock().expect("not poisoned");
        if pending.len() >= MAX_PENDING && !pending.contains_key(&slot) {
            tracing::warn!("usage counts are not being written; a count was dropped");
            return;
        }
        pending.entry(slot).or_default().add(counts);
    }

    /// Writes what is pending in one statement; on failure the counts stay for the next try.
    pub async fn flush(&self, pool: &Pool) -> Result<usize, DatabaseError> {
        let taken: Vec<(Slot, Counts)> = {
            let mut pending = self.pending.lock().expect("not poisoned");
            pending.drain().collect()
        };
        if taken.is_empty() {
            return Ok(0);
        }
        let written = write(pool, &taken).await;
        if written.is_err() {
            let mut pending = self.pending.lock().expect("not poisoned");
            for (slot, counts) in taken.iter().cloned() {
                pending.entry(slot).or_default().add(counts);
            }
        }
        written.map(|()| taken.len())
    }

    /// Flushes every `interval` until shutdown (the service flushes once more after draining).
    pub async fn run(self, pool: Pool, interval: Duration, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                () = tokio::time::sleep(interval) => false,
            };
            match self.flush(&pool).await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("usage counts are written again");
                }
                Ok(_) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot write usage counts; they are kept and retried");
                }
                Err(_) => {}
            }
            if stop {
                return;
            }
        }
    }
}

async fn write(pool: &Pool, rows: &[(Slot, Counts)]) -> Result<(), DatabaseError> {
    let mut conn = database::get(pool).await?;
    let tenants: Vec<&str> = rows.iter().map(|((t, _, _), _)| t.as_str()).collect();
    let keys: Vec<String> = rows.iter().map(|((_, k, _), _)| k.to_string()).collect();
    let days: Vec<NaiveDate> = rows.iter().map(|((_, _, d), _)| *d).collect();
    let requests: Vec<i64> = rows.iter().map(|(_, c)| c.requests).collect();
    let characters: Vec<i64> = rows.iter().map(|(_, c)| c.characters).collect();
    let seconds: Vec<f64> = rows.iter().map(|(_, c)| c.audio_seconds).collect();
    let jobs: Vec<i64> = rows.iter().map(|(_, c)| c.jobs).collect();
    diesel::sql_query(
        "INSERT INTO usage_daily (tenant, key_id, day, requests, characters, audio_seconds, jobs) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bigint[], $6::float8[], $7::bigint[]) \
         ON CONFLICT (tenant, key_id, day) DO UPDATE SET \
           requests = usage_daily.requests + excluded.requests, \
           characters = usage_daily.characters + excluded.characters, \
           audio_seconds = usage_daily.audio_seconds + excluded.audio_seconds, \
           jobs = usage_daily.jobs + excluded.jobs",
    )
    .bind::<Array<Text>, _>(tenants)
    .bind::<Array<Text>, _>(keys)
    .bind::<Array<Date>, _>(days)
    .bind::<Array<BigInt>, _>(requests)
    .bind::<Array<BigInt>, _>(characters)
    .bind::<Array<Double>, _>(seconds)
    .bind::<Array<BigInt>, _>(jobs)
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(())
}

#[derive(QueryableByName)]
struct Sum {
    #[diesel(sql_type = BigInt)]
    characters: i64,
}

/// The characters `key` has had spoken this month, as PostgreSQL has recorded them.
pub async fn month_characters(pool: &Pool, key: &KeyRecord) -> Result<u64, DatabaseError> {
    let today = Utc::now().date_naive();
    let first = today.with_day(1).expect("day 1 exists");
    let mut conn = database::get(pool).await?;
    let rows: Vec<Sum> = diesel::sql_query(
        "SELECT COALESCE(SUM(characters), 0)::bigint AS characters FROM usage_daily \
         WHERE tenant = $1 AND key_id = $2 AND day >= $3",
    )
    .bind::<Text, _>(&key.tenant)
    .bind::<Text, _>(key.id)
    .bind::<Date, _>(first)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(rows
        .into_iter()
        .next()
        .map_or(0, |r| u64::try_from(r.characters).unwrap_or(0)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/usage", "GET").route(web::get().to(usage)));
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    /// First day, `YYYY-MM-DD` (UTC); the first of this month when absent.
    #[serde(default)]
    #[param(format = Date)]
    from: Option<String>,
    /// Last day, inclusive; today when absent. At most 366 days after `from`.
    #[serde(default)]
    #[param(format = Date)]
    to: Option<String>,
    /// Only this key of the tenant.
    #[serde(default)]
    key_id: Option<String>,
}

#[derive(QueryableByName, Serialize, ToSchema)]
#[schema(as = UsageDay)]
struct DayRow {
    #[diesel(sql_type = Date)]
    day: NaiveDate,
    #[diesel(sql_type = Text)]
    key_id: String,
    #[diesel(sql_type = BigInt)]
    requests: i64,
    #[diesel(sql_type = BigInt)]
    characters: i64,
    #[diesel(sql_type = Double)]
    audio_seconds: f64,
    #[diesel(sql_type = BigInt)]
    jobs: i64,
}

#[derive(Serialize, Default, ToSchema)]
#[schema(as = UsageTotals)]
struct Totals {
    requests: i64,
    characters: i64,
    audio_seconds: f64,
    jobs: i64,
    /// Webhooks delivered to the tenant's partner endpoints; `null` when delivery-worker could
    /// not be asked.
    webhooks_delivered: Option<u64>,
}

/// Webhooks delivered to the tenant's partner endpoints on one UTC day.
#[derive(Serialize, ToSchema)]
#[schema(as = UsageDeliveries)]
struct Deliveries {
    /// `YYYY-MM-DD`.
    day: String,
    delivered: u64,
}

#[derive(Serialize, ToSchema)]
struct Quota {
    plan: String,
    /// Characters the plan allows a key per calendar month (UTC).
    monthly_characters: u64,
    /// Characters the key has had spoken this month.
    used_characters: u64,
    /// When the quota starts over: the first instant of next month, UTC.
    #[schema(format = DateTime)]
    resets_at: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Usage)]
struct UsageBody {
    tenant: String,
    from: NaiveDate,
    to: NaiveDate,
    totals: Totals,
    /// One row per key and day with any use, oldest first.
    days: Vec<DayRow>,
    /// Webhooks delivered per day (to the tenant, whichever key made their events); `null` when
    /// delivery-worker could not be asked.
    webhooks: Option<Vec<Deliveries>>,
    /// The calling key's monthly character quota.
    quota: Quota,
}

/// The longest range one request may ask for.
const MAX_RANGE_DAYS: i64 = 366;

fn day(field: &str, text: Option<&str>, default: NaiveDate) -> Result<NaiveDate, Problem> {
    match text {
        None => Ok(default),
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            Problem::invalid_request(format!("{field} must be a date written YYYY-MM-DD"))
        }),
    }
}

/// The tenant's usage per day and key.
///
/// Requests, characters, seconds of audio and jobs, with their totals and the calling key's
/// monthly character quota. Counts arrive within `USAGE_FLUSH_INTERVAL` (5 s by default).
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = tag::USAGE,
    params(UsageQuery),
    responses(
        (status = 200, description = "The usage.", body = UsageBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
pub(crate) async fn usage(
    caller: Caller,
    query: web::Query<UsageQuery>,
    pool: web::Data<Pool>,
    limiter: web::Data<Limiter>,
    delivery: web::Data<crate::webhooks::Client>,
) -> Result<HttpResponse, Problem> {
    let key = caller.require(Scope::Usage)?;
    let today = Utc::now().date_naive();
    let from = day(
        "from",
        query.from.as_deref(),
        today.with_day(1).expect("day 1"),
    )?;
    let to = day("to", query.to.as_deref(), today)?;
    if to < from {
        return Err(Problem::invalid_request("to must not be before from"));
    }
    if (to - from).num_days() >= MAX_RANGE_DAYS {
        return Err(Problem::invalid_request(format!(
            "from and to must be at most {MAX_RANGE_DAYS} days apart"
        )));
    }
    let key_filter = match query.key_id.as_deref() {
        None => None,
        Some(text) => Some(
            KeyId::parse(text)
                .map_err(|_| Problem::invalid_request("key_id must be a key id such as key_…"))?,
        ),
    };
    let unavailable = |error: DatabaseError| {
        tracing::warn!(%error, "cannot read usage");
        Problem::unavailable("Usage cannot be read right now; retry shortly.").retry_after(2)
    };
    let mut conn = database::get(&pool).await.map_err(unavailable)?;
    let days: Vec<DayRow> = diesel::sql_query(
        "SELECT day, key_id, requests, characters, audio_seconds, jobs FROM usage_daily \
         WHERE tenant = $1 AND day BETWEEN $2 AND $3 AND ($4::text IS NULL OR key_id = $4) \
         ORDER BY day, key_id LIMIT 50000",
    )
    .bind::<Text, _>(&key.tenant)
    .bind::<Date, _>(from)
    .bind::<Date, _>(to)
    .bind::<Nullable<Text>, _>(key_filter.map(|k| k.to_string()))
    .load(&mut conn)
    .await
    .map_err(|e| unavailable(DatabaseError::Query(e)))?;
    drop(conn);
    let mut totals = Totals::default();
    for row in &days {
        totals.requests += row.requests;
        totals.characters += row.characters;
        totals.audio_seconds += row.audio_seconds;
        totals.jobs += row.jobs;
    }
    let used = month_characters(&pool, key).await.map_err(unavailable)?;
    let webhooks = delivery
        .get_ref()
        .clone()
        .get_usage(internal_rpc::on_behalf(
            sonora_proto::delivery::v1::GetUsageRequest {
                tenant: String::new(),
                from: from.format("%Y-%m-%d").to_string(),
                to: to.format("%Y-%m-%d").to_string(),
            },
            &key.principal(),
        ))
        .await
        .map(|r| {
            r.into_inner()
                .days
                .into_iter()
                .map(|d| Deliveries {
                    day: d.day,
                    delivered: d.delivered,
                })
                .collect::<Vec<_>>()
        })
        .inspect_err(|status| {
            tracing::warn!(code = ?status.code(), "cannot ask delivery-worker for webhook usage");
        })
        .ok();
    totals.webhooks_delivered = webhooks
        .as_ref()
        .map(|days| days.iter().map(|d| d.delivered).sum());
    Ok(HttpResponse::Ok().json(UsageBody {
        tenant: key.tenant.to_string(),
        from,
        to,
        totals,
        days,
        webhooks,
        quota: Quota {
            plan: key.plan.clone(),
            monthly_characters: limiter.settings().plan(&key.plan).monthly_characters,
            used_characters: used,
            resets_at: crate::ratelimit::next_month_start()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        },
    }))
}

impl UsageQuery {
    /// From `from` to today, every key (the console's charts).
    pub(crate) fn from_day(from: NaiveDate) -> Self {
        Self {
            from: Some(from.format("%Y-%m-%d").to_string()),
            to: None,
            key_id: None,
        }
    }
}
