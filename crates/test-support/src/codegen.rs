//! A local fake of the code-generation API's agent runs (`docs/api-reference` of
//! `codegen-sh/codegen`): `POST /v1/organizations/{org_id}/agent/run` with a bearer token and a
//! `CreateAgentRunInput` body (`prompt` required; `images`, `metadata`, `repo_id`, `model`,
//! `agent_type` optional). It answers an `AgentRunResponse` (`id`, `organization_id`, `status`,
//! `created_at`, `web_url`, …), 401 for a wrong token, 404 for another organisation, 422 for a body
//! without a prompt, and, when told, 429 (`{"message": "Rate limit exceeded…", "status_code":
//! 429}`) or 500 for the next requests. It keeps every request it received.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// One request as received.
#[derive(Debug, Clone)]
pub struct AgentRunRequest {
    pub org_id: String,
    /// The `Authorization` header.
    pub authorization: String,
    pub body: serde_json::Value,
    /// What the fake answered.
    pub status: u16,
}

/// A forced answer for one request.
#[derive(Debug, Clone, Copy)]
pub enum Forced {
    /// 429, with `Retry-After` in seconds if given.
    RateLimited { retry_after: Option<u64> },
    /// 500.
    ServerError,
}

#[derive(Default)]
struct State {
    requests: Vec<AgentRunRequest>,
    forced: VecDeque<Forced>,
    next_id: i64,
}

/// The fake API; one organisation, one token.
#[derive(Clone)]
pub struct FakeCodegen {
    pub base: String,
    pub org_id: u64,
    pub token: String,
    state: Arc<Mutex<State>>,
}

async fn agent_run(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    fake: web::Data<FakeCodegen>,
) -> HttpResponse {
    let org_id = path.into_inner();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut state = fake.state.lock().expect("not poisoned");
    let response = if authorization != format!("Bearer {}", fake.token) {
        HttpResponse::Unauthorized()
            .json(serde_json::json!({"detail": "Invalid or missing API token"}))
    } else if org_id != fake.org_id.to_string() {
        HttpResponse::Forbidden().json(serde_json::json!({"message": "You do not have access to this organization.", "status_code": 403}))
    } else if !json["prompt"].is_string() {
        HttpResponse::UnprocessableEntity().json(serde_json::json!({"detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]}))
    } else {
        match state.forced.pop_front() {
            Some(Forced::RateLimited { retry_after }) => {
                let mut response = HttpResponse::TooManyRequests();
                if let Some(seconds) = retry_after {
                    response.insert_header(("retry-after", seconds.to_string()));
                }
                response.json(serde_json::json!({"message": "Rate limit exceeded. Please try again later.", "status_code": 429}))
            }
            Some(Forced::ServerError) => HttpResponse::InternalServerError()
                .json(serde_json::json!({"message": "Internal server error", "status_code": 500})),
            None => {
                state.next_id += 1;
                let id = 1000 + state.next_id;
                HttpResponse::Ok().json(serde_json::json!({
                    "id": id,
                    "organization_id": fake.org_id,
                    "status": "ACTIVE",
                    "created_at": "2026-12-02T10:00:00Z",
                    "web_url": format!("https://codegen.com/agent/trace/{id}"),
                    "result": null,
                    "summary": null,
                    "source_type": "API",
                    "github_pull_requests": [],
                    "metadata": json["metadata"],
                }))
            }
        }
    };
    state.requests.push(AgentRunRequest {
        org_id,
        authorization,
        body: json,
        status: response.status().as_u16(),
    });
    response
}

impl FakeCodegen {
    /// Starts the fake on a loopback port, for organisation `org_id` and `token`.
    pub async fn start(org_id: u64, token: &str) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds on loopback");
        let port = listener.local_addr().expect("has an address").port();
        let fake = Self {
            base: format!("http://127.0.0.1:{port}"),
            org_id,
            token: token.to_owned(),
            state,
        };
        let data = web::Data::new(fake.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(data.clone()).route(
                "/v1/organizations/{org_id}/agent/run",
                web::post().to(agent_run),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listens")
        .run();
        tokio::spawn(server);
        fake
    }

    /// Answers the next requests as given, in order, then normally again.
    pub fn force(&self, answers: &[Forced]) {
        self.state
            .lock()
            .expect("not poisoned")
            .forced
            .extend(answers.iter().copied());
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<AgentRunRequest> {
        self.state.lock().expect("not poisoned").requests.clone()
    }
}
