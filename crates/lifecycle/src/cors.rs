//! Cross-origin requests to a public port (the gateway's API, webhook-ingest's status). In
//! development every origin is allowed; in production only those in `CORS_ORIGINS`, and a
//! preflight from any other is refused (403) with no CORS headers, so the browser blocks the
//! call. What a preflight may ask for (methods, headers) is the app's: [`CorsPolicy`] carries it.

use std::sync::Arc;

use actix_web::{
    Error, HttpResponse,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{
        Method,
        header::{self, HeaderValue},
    },
    middleware::Next,
};

/// Which origins may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Development: any origin.
    Any,
    /// Production: these origins only (none: no cross-origin call at all).
    Only(Arc<Vec<String>>),
}

/// Who may call cross-origin, and what a preflight may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    pub origins: Origins,
    /// `Access-Control-Allow-Methods`, such as `GET, POST`.
    pub methods: &'static str,
    /// `Access-Control-Allow-Headers`.
    pub headers: &'static str,
    /// `Access-Control-Expose-Headers`: what scripts may read from answers.
    pub expose: &'static str,
}

impl CorsPolicy {
    /// Development allows every origin; production only `origins` (from `CORS_ORIGINS`).
    pub fn new(
        production: bool,
        origins: Vec<String>,
        methods: &'static str,
        headers: &'static str,
    ) -> Self {
        Self {
            origins: if production {
                Origins::Only(Arc::new(origins))
            } else {
                Origins::Any
            },
            methods,
            headers,
            expose: "",
        }
    }

    fn allows(&self, origin: &str) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Only(origins) => origins.iter().any(|o| o == origin),
        }
    }
}

/// Parses `CORS_ORIGINS`: comma-separated origins, each `scheme://host[:port]` with no path;
/// the problem names the origin that is wrong.
pub fn parse_origins(list: &[String]) -> Result<Vec<String>, String> {
    list.iter()
        .map(|origin| {
            let url = url::Url::parse(origin)
                .map_err(|_| format!("{origin:?} is not an origin such as https://console.example.com"))?;
            let bare = matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.path() == "/"
                && !origin.trim_end().ends_with('/')
                && url.query().is_none()
                && url.username().is_empty();
            if bare {
                Ok(url.origin().ascii_serialization())
            } else {
                Err(format!(
                    "{origin:?} must be scheme://host[:port] with no path, such as https://console.example.com"
                ))
            }
        })
        .collect()
}

/// The middleware: answers preflights and adds `Access-Control-Allow-Origin` for allowed
/// origins.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let policy = req
        .app_data::<actix_web::web::Data<CorsPolicy>>()
        .map(|p| p.get_ref().clone())
        .unwrap_or(CorsPolicy {
            origins: Origins::Only(Arc::new(Vec::new())),
            methods: "",
            headers: "",
            expose: "",
        });
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let allowed = policy.allows(&origin);
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let response = if allowed {
            HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, policy.methods))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, policy.headers))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .insert_header((header::VARY, "Origin"))
                .finish()
        } else {
            HttpResponse::Forbidden()
                .insert_header((header::VARY, "Origin"))
                .finish()
        };
        return Ok(req.into_response(response));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if allowed && let Ok(value) = HeaderValue::from_str(&origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if !policy.expose.is_empty() {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(policy.expose),
            );
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let ok = parse_origins(&[
            "https://console.example.com".into(),
            "http://localhost:3000".into(),
        ])
        .unwrap();
        assert_eq!(ok, ["https://console.example.com", "http://localhost:3000"]);
        for bad in [
            "console.example.com",
            "https://console.example.com/app",
            "ftp://x.example",
            "https://console.example.com/",
        ] {
            let error = parse_origins(&[bad.into()]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        let only = CorsPolicy::new(true, ok, "GET", "content-type");
        assert!(only.allows("https://console.example.com"));
        assert!(!only.allows("https://evil.example"));
        assert!(
            CorsPolicy::new(false, Vec::new(), "GET", "content-type")
                .allows("https://anything.example")
        );
    }
}
