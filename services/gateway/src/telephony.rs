//! Phone calls over Twilio Media Streams.
//!
//! - `POST /v1/telephony/twilio/voice` is Twilio's voice webhook. Its `X-Twilio-Signature` is
//!   checked (base64 HMAC-SHA1 keyed with `TWILIO_AUTH_TOKEN` over `PUBLIC_BASE_URL` + the path
//!   and query as received + every form parameter's name and value, sorted by name); anything
//!   else is 403. The called number (`To`) is looked up in `TWILIO_NUMBERS` (and
//!   `TWILIO_PHONE_NUMBER`), which names its tenant, greeting and voice; the answer is TwiML that
//!   connects the call to a bidirectional `<Connect><Stream>` on this gateway, with the tenant and
//!   numbers as `<Parameter>`s (a stream URL takes no query string). A number not listed is
//!   answered `<Reject/>`.
//! - `GET /v1/telephony/twilio/media` is the Media Streams WebSocket ([`calls`]); its upgrade is
//!   signed too, over the `wss://` URL with no parameters.
//! - `POST /v1/calls/{call_sid}/say` and `/clear` ([`calls`]) let the number's tenant speak on
//!   the call and interrupt it.

pub mod calls;
pub mod events;
pub mod signature;

use std::{collections::HashMap, time::Duration};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use http_problem::Problem;
use ids::Tenant;
use serde::Deserialize;
use settings::{ExposeSecret as _, SecretString, SettingError, Sources};
use tokio_util::sync::CancellationToken;

use crate::{Peers, routes::resource};

pub const VOICE_PATH: &str = "/v1/telephony/twilio/voice";
pub const MEDIA_PATH: &str = "/v1/telephony/twilio/media";
/// The largest voice webhook body read (Twilio's are about 1 KiB).
const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

/// What a phone number says and for whom.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    /// E.164, as Twilio sends it in `To` (`+15551230000`).
    pub number: String,
    /// The tenant whose calls these are: its keys may speak on them, its partners get their
    /// events.
    pub tenant: String,
    /// Spoken when the stream starts; nothing when absent.
    #[serde(default)]
    pub greeting: Option<String>,
    /// The voice (slug or UUID); the installation's default when absent.
    #[serde(default)]
    pub voice: Option<String>,
}

/// `TWILIO_*`, `PUBLIC_BASE_URL` and `CALL_SAY_MAX_WAIT`.
#[derive(Debug, Clone)]
pub struct TelephonySettings {
    /// `TWILIO_ACCOUNT_SID`: when set, a webhook or stream of another account is refused.
    pub account_sid: Option<String>,
    /// `TWILIO_AUTH_TOKEN`: the key of Twilio's signatures. Telephony is off without it.
    pub auth_token: Option<SecretString>,
    /// `PUBLIC_BASE_URL`: the gateway's URL as Twilio reaches it (`https://voice.example.com`),
    /// which a gateway behind an Ingress cannot know; signatures are computed over it.
    pub public_base_url: Option<url::Url>,
    /// `TWILIO_NUMBERS`, plus `TWILIO_PHONE_NUMBER` with `TWILIO_TENANT` and `TWILIO_GREETING`.
    pub numbers: HashMap<String, NumberConfig>,
    /// `CALL_SAY_MAX_WAIT`: the longest `?wait=true` may hold a `say` request.
    pub say_max_wait: Duration,
}

fn e164(number: &str) -> bool {
    number.len() >= 4
        && number.len() <= 16
        && number.starts_with('+')
        && number[1..].bytes().all(|b| b.is_ascii_digit())
}

impl TelephonySettings {
    pub fn load(src: &Sources, environment: settings::Environment) -> Result<Self, SettingError> {
        let account_sid: Option<String> = src.optional("TWILIO_ACCOUNT_SID")?;
        if let Some(sid) = &account_sid
            && !(sid.len() == 34
                && sid.starts_with("AC")
                && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(SettingError::new(
                "TWILIO_ACCOUNT_SID",
                "must be AC followed by 32 hexadecimal digits",
            ));
        }
        let auth_token: Option<SecretString> = src.optional("TWILIO_AUTH_TOKEN")?;
        if let Some(token) = &auth_token
            && token.expose_secret().len() < 16
        {
            return Err(SettingError::new(
                "TWILIO_AUTH_TOKEN",
                "must be at least 16 characters (the account's auth token)",
            ));
        }
        let public_base_url: Option<url::Url> = src.optional("PUBLIC_BASE_URL")?;
        if let Some(url) = &public_base_url {
            let scheme_ok = match environment {
                settings::Environment::Production => url.scheme() == "https",
                _ => matches!(url.scheme(), "https" | "http"),
            };
            if !scheme_ok
                || url.host_str().is_none()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(SettingError::new(
                    "PUBLIC_BASE_URL",
                    "must be an https:// URL (http:// outside production) with a host and no query, such as https://voice.example.com",
                ));
            }
        }
        let mut numbers = HashMap::new();
        let listed: Option<String> = src.optional("TWILIO_NUMBERS")?;
        let listed: Vec<NumberConfig> = match listed {
            Some(json) => serde_json::from_str(&json).map_err(|error| {
                SettingError::new(
                    "TWILIO_NUMBERS",
                    format!(
                        "must be a JSON array of {{number, tenant, greeting?, voice?}} ({})",
                        http_problem::serde_message(&error)
                    ),
                )
            })?,
            None => Vec::new(),
        };
        let phone: Option<String> = src.optional("TWILIO_PHONE_NUMBER")?;
        let tenant: Option<String> = src.optional("TWILIO_TENANT")?;
        let greeting: Option<String> = src.optional("TWILIO_GREETING")?;
        let single = match (phone, tenant) {
            (Some(number), Some(tenant)) => Some(NumberConfig {
                number,
                tenant,
                greeting,
                voice: None,
            }),
            (Some(_), None) => {
                return Err(SettingError::new(
                    "TWILIO_TENANT",
                    "is required with TWILIO_PHONE_NUMBER: the tenant the number's calls belong to",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingError::new(
                    "TWILIO_PHONE_NUMBER",
                    "is required with TWILIO_TENANT",
                ));
            }
            (None, None) => None,
        };
        let entries = listed
            .into_iter()
            .map(|entry| ("TWILIO_NUMBERS", entry))
            .chain(single.map(|entry| ("TWILIO_PHONE_NUMBER", entry)));
        for (name, entry) in entries {
            if !e164(&entry.number) {
                return Err(SettingError::new(
                    name,
                    format!(
                        "{:?} is not an E.164 number such as +15551230000",
                        entry.number
                    ),
                ));
            }
            if Tenant::parse(&entry.tenant).is_err() {
                return Err(SettingError::new(
                    name,
                    format!("the tenant of {} is not a valid tenant", entry.number),
                ));
            }
            if entry
                .greeting
                .as_ref()
                .is_some_and(|g| g.chars().count() > crate::routes::MAX_TEXT_CHARS)
            {
                return Err(SettingError::new(
                    name,
                    format!(
                        "the greeting of {} is over {} characters",
                        entry.number,
                        crate::routes::MAX_TEXT_CHARS
                    ),
                ));
            }
            if numbers.insert(entry.number.clone(), entry).is_some() {
                return Err(SettingError::new(name, "lists a number twice"));
            }
        }
        let say_max_wait = src.or("CALL_SAY_MAX_WAIT", Duration::from_secs(60))?;
        if say_max_wait < Duration::from_secs(1) || say_max_wait > Duration::from_secs(600) {
            return Err(SettingError::new(
                "CALL_SAY_MAX_WAIT",
                "must be between 1s and 10m",
            ));
        }
        if auth_token.is_some() && public_base_url.is_none() {
            return Err(SettingError::new(
                "PUBLIC_BASE_URL",
                "is required with TWILIO_AUTH_TOKEN: Twilio signs the URL it calls, which the gateway cannot see behind an Ingress",
            ));
        }
        Ok(Self {
            account_sid,
            auth_token,
            public_base_url,
            numbers,
            say_max_wait,
        })
    }

    /// The public URL of `path` (`https://host/prefix` + `path`).
    fn public_url(&self, path_and_query: &str) -> Option<String> {
        let base = self.public_base_url.as_ref()?;
        Some(format!(
            "{}{}",
            base.as_str().trim_end_matches('/'),
            path_and_query
        ))
    }

    /// The Media Streams URL, `wss://` (or `ws://` behind an `http://` base).
    pub fn media_url(&self) -> Option<String> {
        let url = self.public_url(MEDIA_PATH)?;
        Some(if let Some(rest) = url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            url
        })
    }
}

/// Everything calls share. Cheap to clone.
#[derive(Clone)]
pub struct Telephony {
    pub(crate) settings: TelephonySettings,
    pub(crate) peers: Peers,
    pub(crate) calls: calls::Registry,
    pub(crate) events: events::Events,
    pub(crate) shutdown: CancellationToken,
}

impl Telephony {
    pub fn new(
        settings: TelephonySettings,
        peers: Peers,
        delivery: crate::webhooks::Client,
        redis: deadpool_redis::Pool,
        redis_url: String,
        shutdown: CancellationToken,
    ) -> Self {
        let events = events::Events::spawn(delivery, shutdown.clone());
        let calls = calls::Registry::new(redis);
        let telephony = Self {
            settings,
            peers,
            calls,
            events,
            shutdown,
        };
        tokio::spawn(calls::follow_forwarded(telephony.clone(), redis_url));
        telephony
    }

    /// The auth token, or 404 when telephony is not configured.
    fn token(&self) -> Result<&SecretString, Problem> {
        self.settings.auth_token.as_ref().ok_or_else(|| {
            Problem::not_found()
                .detail("Telephony is not configured on this installation (TWILIO_AUTH_TOKEN).")
        })
    }

    /// Checks `X-Twilio-Signature` over `url` and `params` (403 without it or when it differs).
    fn verify(
        &self,
        req: &HttpRequest,
        url: &str,
        params: &[(String, String)],
    ) -> Result<(), Problem> {
        let token = self.token()?;
        let given = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| forbidden("X-Twilio-Signature is missing."))?;
        if signature::verify(token.expose_secret().as_bytes(), url, params, given) {
            Ok(())
        } else {
            Err(forbidden(
                "X-Twilio-Signature does not match this request (check TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL).",
            ))
        }
    }
}

fn forbidden(detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(VOICE_PATH, "POST").route(web::post().to(voice)))
        .service(resource(MEDIA_PATH, "GET").route(web::get().to(calls::media)))
        .service(resource("/v1/calls/{id}/say", "POST").route(web::post().to(calls::say)))
        .service(resource("/v1/calls/{id}/clear", "POST").route(web::post().to(calls::clear)));
}

/// Escapes text for an XML attribute or element.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to write other control characters.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The TwiML connecting a call to the media stream at `url`, with `parameters`.
pub fn connect_twiml(url: &str, parameters: &[(&str, &str)]) -> String {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect>"#);
    xml.push_str(&format!(r#"<Stream url="{}">"#, xml_escape(url)));
    for (name, value) in parameters {
        xml.push_str(&format!(
            r#"<Parameter name="{}" value="{}"/>"#,
            xml_escape(name),
            xml_escape(value)
        ));
    }
    xml.push_str("</Stream></Connect></Response>");
    xml
}

const REJECT_TWIML: &str =
    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="rejected"/></Response>"#;

fn twiml_response(xml: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(xml)
}

/// Twilio's voice webhook: a signed form, answered with TwiML. Not in the OpenAPI document: it
/// is Twilio's to call, signed rather than keyed.
#[tracing::instrument(skip_all)]
async fn voice(
    req: HttpRequest,
    body: web::Bytes,
    telephony: web::Data<Telephony>,
) -> Result<HttpResponse, Problem> {
    telephony.token()?;
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload Too Large",
        )
        .detail(format!(
            "The webhook body is over {MAX_WEBHOOK_BYTES} bytes."
        )));
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let path = req
        .uri()
        .path_and_query()
        .map_or(VOICE_PATH, |p| p.as_str());
    let url = telephony
        .settings
        .public_url(path)
        .ok_or_else(Problem::internal)?;
    telephony.verify(&req, &url, &params)?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(sid) = &telephony.settings.account_sid
        && param("AccountSid") != Some(sid.as_str())
    {
        return Err(forbidden("The call belongs to another Twilio account."));
    }
    let to = param("To").unwrap_or_default();
    let Some(number) = telephony.settings.numbers.get(to) else {
        tracing::info!(to, "a call to a number that is not configured is rejected");
        return Ok(twiml_response(REJECT_TWIML.to_owned()));
    };
    let media = telephony
        .settings
        .media_url()
        .ok_or_else(Problem::internal)?;
    let xml = connect_twiml(
        &media,
        &[
            ("tenant", number.tenant.as_str()),
            ("number", number.number.as_str()),
            ("from", param("From").unwrap_or_default()),
        ],
    );
    tracing::info!(call = param("CallSid").unwrap_or_default(), tenant = %number.tenant, "call connected to a media stream");
    Ok(twiml_response(xml))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twiml_escapes_what_it_carries() {
        let xml = connect_twiml(
            "wss://h/v1/telephony/twilio/media",
            &[("from", "<\"a&b'>"), ("tenant", "acme")],
        );
        assert!(xml.contains(r#"<Parameter name="from" value="&lt;&quot;a&amp;b&apos;&gt;"/>"#));
        assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/v1/telephony/twilio/media">"#));
        assert_eq!(xml_escape("a\u{1}b"), "ab");
    }

    #[test]
    fn numbers_and_urls_are_checked_at_start() {
        let load = |pairs: &[(&str, &str)]| {
            TelephonySettings::load(&test_sources(pairs), settings::Environment::Development)
        };
        let ok = load(&[
            ("TWILIO_AUTH_TOKEN", "0123456789abcdef0123"),
            ("PUBLIC_BASE_URL", "https://voice.example.com/"),
            (
                "TWILIO_NUMBERS",
                r#"[{"number": "+15551230000", "tenant": "acme", "greeting": "Hi"}]"#,
            ),
            ("TWILIO_PHONE_NUMBER", "+15559990000"),
            ("TWILIO_TENANT", "globex"),
        ])
        .unwrap();
        assert_eq!(ok.numbers.len(), 2);
        assert_eq!(
            ok.media_url().unwrap(),
            "wss://voice.example.com/v1/telephony/twilio/media"
        );
        assert!(load(&[("TWILIO_AUTH_TOKEN", "0123456789abcdef0123")]).is_err());
        assert!(load(&[("TWILIO_NUMBERS", r#"[{"number": "555", "tenant": "acme"}]"#)]).is_err());
        assert!(load(&[("TWILIO_PHONE_NUMBER", "+15551230000")]).is_err());
        assert!(load(&[("TWILIO_ACCOUNT_SID", "AC123")]).is_err());
    }

    fn test_sources(pairs: &[(&str, &str)]) -> Sources {
        Sources::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .unwrap()
    }
}
