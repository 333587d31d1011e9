//! What an event sets off, and running it: the built-in completion of Replicate predictions
//! (`CompletePrediction` on audio-generation), and the actions of the routing rules that match
//! it: `publish` (an outbox event for the rule's tenant, `github.<event>.<action>` or
//! `<source>.<type>`) and `agent_run` (a run on the code-generation API).

use std::sync::Arc;

use internal_rpc::PeerChannel;
use sonora_proto::audio::v1::{
    CompletePredictionRequest, audio_generation_client::AudioGenerationClient,
};

use crate::{
    codegen::Codegen,
    dispatch::Outcome,
    inbox::ClaimedEvent,
    routing::{self, EventFacts, Rule, RuleAction},
};

/// The longest an HTTP action (an agent run) may take; the lease must outlast it.
pub const LONGEST_HTTP_ACTION: std::time::Duration = std::time::Duration::from_secs(30);

/// The kinds of action, as the metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    CompletePrediction,
    Publish,
    AgentRun,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::CompletePrediction => "complete_prediction",
            Self::Publish => "publish",
            Self::AgentRun => "agent_run",
        }
    }
}

/// One action planned for an event.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The action's key among the event's actions (`complete_prediction`, `publish:<rule>`): an
    /// action whose key succeeded once is not run again.
    pub key: String,
    pub kind: ActionKind,
    /// For a publish action: the tenant and the outbox event, enqueued in the same transaction
    /// that records the attempt.
    pub publish: Option<(String, outbox::Event)>,
    /// For an agent run: the prompt, made from the rule's template, and the run's metadata.
    pub run: Option<(String, serde_json::Value)>,
    /// Why the action cannot be run at all (an event too large to publish): it is refused.
    pub invalid: Option<String>,
    /// The tenant of the rule it runs for: the event is shown to that tenant, with this
    /// action's attempts.
    pub tenant: Option<String>,
}

impl Planned {
    fn new(key: String, kind: ActionKind) -> Self {
        Self {
            key,
            kind,
            publish: None,
            run: None,
            invalid: None,
            tenant: None,
        }
    }
}

/// Plans and runs actions.
#[derive(Clone)]
pub struct Actions {
    /// audio-generation, which finishes the job a Replicate webhook is about.
    pub audio: AudioGenerationClient<PeerChannel>,
    /// The routing rules (`ROUTING_RULES`).
    pub rules: Arc<Vec<Rule>>,
    /// The code-generation API, when configured (required by any `agent_run` rule).
    pub codegen: Option<Codegen>,
}

impl Actions {
    /// The actions `event` sets off: the built-in one of its source, then those of every rule
    /// that matches it, in the rules' order.
    pub fn plan(&self, event: &ClaimedEvent) -> Vec<Planned> {
        let mut planned = Vec::new();
        if routing::has_builtin_action(&event.source) {
            planned.push(Planned::new(
                ActionKind::CompletePrediction.name().to_owned(),
                ActionKind::CompletePrediction,
            ));
        }
        let payload: serde_json::Value =
            serde_json::from_str(&event.payload).unwrap_or(serde_json::Value::Null);
        let event_type = event.event_type.as_deref().unwrap_or_default();
        let facts = EventFacts {
            source: &event.source,
            event_type,
            payload: &payload,
        };
        for rule in self.rules.iter().filter(|r| r.matches(&facts)) {
            for action in &rule.actions {
                match action {
                    RuleAction::Publish => {
                        let mut plan =
                            Planned::new(format!("publish:{}", rule.name), ActionKind::Publish);
                        plan.tenant = rule.tenant.as_ref().map(ToString::to_string);
                        let tenant = rule
                            .tenant
                            .clone()
                            .expect("checked at load: publish has a tenant");
                        let body = serde_json::json!({
                            "id": event.id,
                            "source": event.source,
                            "type": event_type,
                            "delivery_id": event.delivery_id,
                            "data": payload,
                        });
                        match outbox::Event::new(
                            tenant.clone(),
                            event.id,
                            &format!("{}.{event_type}", event.source),
                            &body,
                        ) {
                            Ok(outbox_event) => {
                                plan.publish = Some((tenant.to_string(), outbox_event));
                            }
                            Err(error) => {
                                plan.invalid = Some(format!("publish:{}: {error}", rule.name));
                            }
                        }
                        planned.push(plan);
                    }
                    RuleAction::AgentRun => {
                        let mut plan =
                            Planned::new(format!("agent_run:{}", rule.name), ActionKind::AgentRun);
                        plan.tenant = rule.tenant.as_ref().map(ToString::to_string);
                        let prompt = rule
                            .prompt
                            .as_ref()
                            .expect("checked at load: agent_run has a prompt")
                            .render(&facts);
                        plan.run = Some((
                            prompt,
                            serde_json::json!({
                                "sonora_event_id": event.id,
                                "source": event.source,
                                "event_type": event_type,
                                "delivery_id": event.delivery_id,
                                "rule": rule.name,
                            }),
                        ));
                        planned.push(plan);
                    }
                }
            }
        }
        planned
    }

    /// Runs one planned action. A publish action's work is the outbox write its attempt's
    /// record makes (in one transaction), so running it has nothing more to do.
    pub async fn run(&self, event: &ClaimedEvent, action: &Planned) -> Outcome {
        if let Some(invalid) = &action.invalid {
            return Outcome::Rejected(invalid.clone());
        }
        match action.kind {
            ActionKind::CompletePrediction => self.complete_prediction(event).await,
            ActionKind::Publish => Outcome::Succeeded { result: None },
            ActionKind::AgentRun => match (&self.codegen, &action.run) {
                (Some(codegen), Some((prompt, metadata))) => {
                    codegen.start_run(prompt, metadata.clone()).await
                }
                _ => Outcome::Rejected(
                    "agent_run: CODEGEN_TOKEN and CODEGEN_ORG_ID are not set".to_owned(),
                ),
            },
        }
    }

    async fn complete_prediction(&self, event: &ClaimedEvent) -> Outcome {
        let (Some(content_type), Some(job_id)) = (&event.subject_type, &event.subject_id) else {
            return Outcome::Rejected("a Replicate event without the job of its path".to_owned());
        };
        let answer = self
            .audio
            .clone()
            .complete_prediction(CompletePredictionRequest {
                job_id: job_id.clone(),
                content_type: content_type.clone(),
                prediction: event.payload.clone().into_bytes(),
            })
            .await;
        completion_outcome(answer.map(|r| r.into_inner().changed))
    }
}

/// What audio-generation's answer to `CompletePrediction` means: NOT_FOUND and
/// INVALID_ARGUMENT are final (no retry finds a job that does not exist or mends a prediction);
/// anything else is tried again.
pub fn completion_outcome(answer: Result<bool, tonic::Status>) -> Outcome {
    match answer {
        Ok(changed) => Outcome::Succeeded {
            result: Some(serde_json::json!({ "changed": changed }).to_string()),
        },
        Err(status) => match status.code() {
            tonic::Code::NotFound => Outcome::Rejected("the job does not exist".to_owned()),
            tonic::Code::InvalidArgument => Outcome::Rejected(format!(
                "audio-generation refused the prediction: {}",
                status.message()
            )),
            code => Outcome::Failed(format!(
                "audio-generation did not complete the prediction ({code:?}): {}",
                status.message()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_generations_answers_decide_retry_or_dead_letter() {
        assert_eq!(
            completion_outcome(Err(tonic::Status::not_found("job_1"))),
            Outcome::Rejected("the job does not exist".into())
        );
        assert_eq!(
            completion_outcome(Err(tonic::Status::invalid_argument(
                "prediction: no status"
            ))),
            Outcome::Rejected(
                "audio-generation refused the prediction: prediction: no status".into()
            )
        );
        for retried in [
            tonic::Status::unavailable("completion is not built yet; retry later"),
            tonic::Status::deadline_exceeded("slow"),
            tonic::Status::internal("boom"),
            tonic::Status::permission_denied("not open"),
        ] {
            assert!(
                matches!(completion_outcome(Err(retried.clone())), Outcome::Failed(_)),
                "{retried:?}"
            );
        }
        assert!(matches!(
            completion_outcome(Ok(true)),
            Outcome::Succeeded { .. }
        ));
    }
}
