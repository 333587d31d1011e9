//! The voice catalogue: the gateway's own table of voices (`voices`), with the stable UUIDs the
//! old clients send as `voice_id`, reconciled with the voices tts-inference has loaded.
//!
//! Each `GET /v1/voices` asks tts-inference for its voices and reconciles the table: a new voice
//! is added with a UUID derived from its slug (UUIDv5 in Sonora's namespace, so every
//! installation gives `en_US-joe-medium` the same id), a voice tts-inference no longer has is
//! marked unavailable, and a voice's technical fields follow tts-inference; its display name and
//! whether it is enabled are the operator's (`gateway voices rename|disable|enable`) and are
//! never overwritten. When tts-inference cannot answer, the list is 503: whether a voice is
//! available is not known then. When PostgreSQL cannot, the list is tts-inference's, with the
//! names and switches last read (a voice's id needs no table).
//!
//! A request's voice is resolved here before synthesis: a UUID is looked up (404 when unknown), a
//! disabled voice is refused (404, saying so), and a slug passes to tts-inference, which knows
//! whether it exists.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use actix_web::{HttpResponse, web};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{Bool, Integer, Jsonb, Text, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl as _;
use http_problem::Problem;
use internal_rpc::PeerChannel;
use serde::{Deserialize, Serialize};
use sonora_proto::tts::v1::{ListVoicesRequest, tts_inference_client::TtsInferenceClient};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    Peers,
    auth::Caller,
    openapi::{self, tag},
    routes::resource,
};

/// The namespace of voice UUIDs (UUIDv5 of the slug).
const NAMESPACE: Uuid = Uuid::from_u128(0x5f1c_9a3e_2b7d_4c18_9e60_7a4d_c3b2_1f08);
/// How long a lookup trusts the cached table before reading it again.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// The UUID of the voice with this slug: the same in every installation.
pub fn voice_uuid(slug: &str) -> Uuid {
    let mut input = NAMESPACE.as_bytes().to_vec();
    input.extend_from_slice(slug.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// One speaker of a voice that has several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Speaker {
    pub id: u32,
    pub name: String,
}

/// A voice as the table keeps it.
#[derive(Debug, Clone, QueryableByName)]
pub struct VoiceRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub slug: String,
    #[diesel(sql_type = Text)]
    pub display_name: String,
    #[diesel(sql_type = Text)]
    pub language: String,
    #[diesel(sql_type = Integer)]
    pub sample_rate: i32,
    #[diesel(sql_type = Text)]
    pub quality: String,
    #[diesel(sql_type = Jsonb)]
    pub speakers: serde_json::Value,
    #[diesel(sql_type = Bool)]
    pub is_default: bool,
    #[diesel(sql_type = Bool)]
    pub enabled: bool,
    #[diesel(sql_type = Bool)]
    pub available: bool,
}

const COLUMNS: &str = "id, slug, display_name, language, sample_rate, quality, speakers, is_default, enabled, available";

/// Every voice in the table, by slug.
pub async fn all(pool: &Pool) -> Result<Vec<VoiceRow>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query(format!("SELECT {COLUMNS} FROM voices ORDER BY slug"))
        .load(&mut conn)
        .await
        .map_err(DatabaseError::Query)
}

/// Changes what operators own of a voice, found by UUID or slug; the voice as it now is.
pub async fn update(
    pool: &Pool,
    voice: &str,
    display_name: Option<&str>,
    enabled: Option<bool>,
) -> Result<Option<VoiceRow>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let id = Uuid::parse_str(voice).ok();
    let rows: Vec<VoiceRow> = diesel::sql_query(format!(
        "UPDATE voices SET display_name = COALESCE($3, display_name), enabled = COALESCE($4, enabled), \
         updated_at = now() WHERE id = $1 OR slug = $2 RETURNING {COLUMNS}"
    ))
    .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(id)
    .bind::<Text, _>(voice)
    .bind::<diesel::sql_types::Nullable<Text>, _>(display_name)
    .bind::<diesel::sql_types::Nullable<Bool>, _>(enabled)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().next())
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<Uuid, VoiceRow>,
    by_slug: HashMap<String, VoiceRow>,
    loaded: Option<Instant>,
}

/// The catalogue; cheap to clone.
#[derive(Clone)]
pub struct Catalogue {
    pool: Pool,
    cache: Arc<RwLock<Cache>>,
}

impl Catalogue {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            cache: Arc::default(),
        }
    }

    fn remember(&self, rows: &[VoiceRow]) {
        let mut cache = self.cache.write().expect("not poisoned");
        cache.by_id = rows.iter().map(|r| (r.id, r.clone())).collect();
        cache.by_slug = rows.iter().map(|r| (r.slug.clone(), r.clone())).collect();
        cache.loaded = Some(Instant::now());
    }

    /// Reconciles the table with tts-inference's voices and returns it; a problem when
    /// tts-inference cannot answer (whether a voice is available is not known then). While
    /// PostgreSQL is away, tts-inference's voices as the cache last knew them.
    pub async fn sync(
        &self,
        tts: &mut TtsInferenceClient<PeerChannel>,
    ) -> Result<Vec<VoiceRow>, Problem> {
        let voices = tts
            .list_voices(ListVoicesRequest {})
            .await
            .map_err(|status| crate::routes::backend_problem("tts-inference", &status))?
            .into_inner()
            .voices;
        let live: Vec<VoiceRow> = voices
            .into_iter()
            .map(|v| VoiceRow {
                id: voice_uuid(&v.id),
                display_name: if v.name.is_empty() {
                    v.id.clone()
                } else {
                    v.name.clone()
                },
                language: v.language,
                sample_rate: i32::try_from(v.sample_rate).unwrap_or(i32::MAX),
                quality: v.quality,
                speakers: serde_json::to_value(
                    v.speakers
                        .into_iter()
                        .map(|s| Speaker {
                            id: s.id,
                            name: s.name,
                        })
                        .collect::<Vec<_>>(),
                )
                .expect("serializable"),
                is_default: v.is_default,
                enabled: true,
                available: true,
                slug: v.id,
            })
            .collect();
        match self.reconcile(&live).await {
            Ok(rows) => {
                self.remember(&rows);
                Ok(rows)
            }
            Err(error) => {
                // The table is away: the live voices, with the names and switches last read
                // (ids need no table: they are derived from the slugs).
                tracing::warn!(%error, "cannot reconcile the voice catalogue; listing tts-inference's voices as last known");
                let cache = self.cache.read().expect("not poisoned");
                Ok(live
                    .into_iter()
                    .map(|mut row| {
                        if let Some(known) = cache.by_slug.get(&row.slug) {
                            row.display_name.clone_from(&known.display_name);
                            row.enabled = known.enabled;
                        }
                        row
                    })
                    .collect())
            }
        }
    }

    /// Writes the live voices into the table and reads it back.
    async fn reconcile(&self, live: &[VoiceRow]) -> Result<Vec<VoiceRow>, DatabaseError> {
        let mut conn = database::get(&self.pool).await?;
        for v in live {
            diesel::sql_query(
                "INSERT INTO voices (id, slug, display_name, language, sample_rate, quality, speakers, is_default) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (slug) DO UPDATE SET language = excluded.language, \
                   sample_rate = excluded.sample_rate, quality = excluded.quality, \
                   speakers = excluded.speakers, is_default = excluded.is_default, available = TRUE, \
                   updated_at = CASE WHEN voices.available THEN voices.updated_at ELSE now() END",
            )
            .bind::<SqlUuid, _>(v.id)
            .bind::<Text, _>(&v.slug)
            .bind::<Text, _>(&v.display_name)
            .bind::<Text, _>(&v.language)
            .bind::<Integer, _>(v.sample_rate)
            .bind::<Text, _>(&v.quality)
            .bind::<Jsonb, _>(&v.speakers)
            .bind::<Bool, _>(v.is_default)
            .execute(&mut conn)
            .await
            .map_err(DatabaseError::Query)?;
        }
        let slugs: Vec<&str> = live.iter().map(|v| v.slug.as_str()).collect();
        diesel::sql_query(
            "UPDATE voices SET available = FALSE, is_default = FALSE, updated_at = now() \
             WHERE available AND NOT (slug = ANY($1))",
        )
        .bind::<diesel::sql_types::Array<Text>, _>(slugs)
        .execute(&mut conn)
        .await
        .map_err(DatabaseError::Query)?;
        drop(conn);
        all(&self.pool).await
    }

    /// The voice a request names, as tts-inference knows it (its slug; empty for the default).
    pub async fn resolve(&self, peers: &Peers, voice: &str) -> Result<String, Problem> {
        let voice = voice.trim();
        if voice.is_empty() {
            return Ok(String::new());
        }
        let id = Uuid::parse_str(voice).ok();
        let find = |cache: &Cache| match id {
            Some(id) => cache.by_id.get(&id).cloned(),
            None => cache.by_slug.get(voice).cloned(),
        };
        let fresh = {
            let cache = self.cache.read().expect("not poisoned");
            cache.loaded.is_some_and(|at| at.elapsed() < CACHE_FOR)
        };
        let mut found = find(&self.cache.read().expect("not poisoned"));
        if (found.is_none() && id.is_some()) || !fresh {
            // A UUID the cache does not know may be a voice added since: reconcile first.
            match self.sync(&mut peers.tts.clone()).await {
                Ok(_) => found = find(&self.cache.read().expect("not poisoned")),
                Err(problem) if id.is_some() && found.is_none() => return Err(problem),
                // What the cache knows stands; a slug can still be tried: tts-inference decides.
                Err(_) => {}
            }
        }
        match (found, id) {
            (Some(row), _) if !row.enabled => Err(Problem::not_found().detail(format!(
                "The voice {voice} is disabled on this installation."
            ))),
            (Some(row), _) => Ok(row.slug),
            (None, Some(_)) => Err(Problem::not_found().detail(format!(
                "voice_id: no voice has the id {voice}; GET /v1/voices lists them."
            ))),
            (None, None) => Ok(voice.to_owned()),
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/voices", "GET").route(web::get().to(list_voices)));
}

#[derive(Serialize, ToSchema)]
#[schema(as = Voice)]
struct VoiceBody {
    /// The stable UUID (what the old clients send as `voice_id`).
    id: String,
    /// tts-inference's id (`en_US-joe-medium`), also accepted as `voice`/`voice_id`.
    slug: String,
    display_name: String,
    /// The same as `display_name`, as earlier versions answered.
    name: String,
    language: String,
    sample_rate: i32,
    quality: String,
    #[schema(value_type = Vec<Speaker>)]
    speakers: serde_json::Value,
    /// Whether the operator lets clients use it (a disabled voice is 404 to speech).
    enabled: bool,
    /// Whether tts-inference has the voice loaded now.
    available: bool,
    /// Whether it is the voice speech uses when none is named.
    default: bool,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Voices)]
struct VoicesBody {
    voices: Vec<VoiceBody>,
}

/// The voice catalogue.
///
/// Reconciled with tts-inference on each call: new voices appear, removed ones stay listed as
/// unavailable. Disabled voices are listed (with `enabled: false`) so clients holding their id
/// learn why it is refused. 503 when tts-inference cannot answer, since which voices are
/// available is not known then.
#[utoipa::path(
    get,
    path = "/v1/voices",
    tag = tag::VOICES,
    responses(
        (status = 200, description = "The catalogue.", body = VoicesBody),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_voices(
    _caller: Caller,
    peers: web::Data<Peers>,
) -> Result<HttpResponse, Problem> {
    let rows = peers.catalogue.sync(&mut peers.tts.clone()).await?;
    Ok(HttpResponse::Ok().json(VoicesBody {
        voices: rows
            .into_iter()
            .map(|r| VoiceBody {
                id: r.id.to_string(),
                name: r.display_name.clone(),
                slug: r.slug,
                display_name: r.display_name,
                language: r.language,
                sample_rate: r.sample_rate,
                quality: r.quality,
                speakers: r.speakers,
                enabled: r.enabled,
                available: r.available,
                default: r.is_default && r.available,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voice_has_the_same_uuid_everywhere() {
        let joe = voice_uuid("en_US-joe-medium");
        assert_eq!(joe, voice_uuid("en_US-joe-medium"));
        assert_ne!(joe, voice_uuid("en_US-joe-low"));
        assert_eq!(joe.get_version_num(), 5);
    }
}
