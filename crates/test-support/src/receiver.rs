//! A partner's webhook receiver on loopback: a real HTTP server that verifies every webhook's
//! Standard Webhooks signature with the keys a test registers for its path, answers as told, and
//! keeps what it received.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use webhook_signature::{SignedHeaders, VerifyingKey, verify};

/// How the receiver answers on one path.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<u64>,
}

impl Behavior {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
}

/// One webhook as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// Whether the signature verified with the keys registered for the path.
    pub verified: bool,
    /// The status it answered (401 when the signature did not verify).
    pub status: u16,
    /// How long it waited before answering; a sender with a shorter timeout never saw the answer.
    pub delay: Duration,
    /// The W3C `traceparent` header, if one came.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct State {
    behaviors: HashMap<String, Behavior>,
    keys: HashMap<String, Vec<VerifyingKey>>,
    received: Vec<Received>,
}

/// The receiver; each path is one partner endpoint.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    state: Arc<Mutex<State>>,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = req.path().to_owned();
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let (behavior, verified) = {
        let state = state.lock().expect("not poisoned");
        let keys = state.keys.get(&path).cloned().unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let verified = verify(
            &keys,
            SignedHeaders {
                id: &id,
                timestamp: &timestamp,
                signature: &signature,
            },
            &body,
            now,
            // Senders may sign with a test's manual clock; the tests that care check the
            // timestamp themselves.
            10 * 365 * 24 * 3600,
        )
        .is_ok();
        (
            state
                .behaviors
                .get(&path)
                .cloned()
                .unwrap_or(Behavior::status(200)),
            verified,
        )
    };
    let status = if verified { behavior.status } else { 401 };
    state.lock().expect("not poisoned").received.push(Received {
        path,
        id,
        timestamp,
        signature,
        body: String::from_utf8_lossy(&body).into_owned(),
        verified,
        status,
        delay: behavior.delay,
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a valid status"));
    if let Some(seconds) = behavior.retry_after {
        response.insert_header(("retry-after", seconds.to_string()));
    }
    response.body(format!("answered {status}"))
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("binds on loopback");
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Self {
            base: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn set(&self, path: &str, behavior: Behavior) {
        self.state
            .lock()
            .expect("not poisoned")
            .behaviors
            .insert(path.to_owned(), behavior);
    }

    /// Verifies `path`'s webhooks with `key` (`whsec_…` or `whpk_…`) too.
    pub fn trust(&self, path: &str, key: &str) {
        self.state
            .lock()
            .expect("not poisoned")
            .keys
            .entry(path.to_owned())
            .or_default()
            .push(VerifyingKey::parse(key).expect("a valid key"));
    }

    /// Replaces the keys a path verifies with.
    pub fn trust_only(&self, path: &str, keys: &[&str]) {
        self.state.lock().expect("not poisoned").keys.insert(
            path.to_owned(),
            keys.iter()
                .map(|k| VerifyingKey::parse(k).expect("a valid key"))
                .collect(),
        );
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("not poisoned").received.clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}
