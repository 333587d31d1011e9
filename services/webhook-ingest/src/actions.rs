//! What an event sets off, and running it: the built-in completion of Replicate predictions
//! (`CompletePrediction` on audio-generation).

use internal_rpc::PeerChannel;
use sonora_proto::audio::v1::{
    CompletePredictionRequest, audio_generation_client::AudioGenerationClient,
};

use crate::{dispatch::Outcome, inbox::ClaimedEvent};

/// The longest an HTTP action (an agent run) may take; the lease must outlast it.
pub const LONGEST_HTTP_ACTION: std::time::Duration = std::time::Duration::from_secs(30);

/// The kinds of action, as the metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    CompletePrediction,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::CompletePrediction => "complete_prediction",
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
}

/// Plans and runs actions.
#[derive(Clone)]
pub struct Actions {
    /// audio-generation, which finishes the job a Replicate webhook is about.
    pub audio: AudioGenerationClient<PeerChannel>,
}

impl Actions {
    /// The actions `event` sets off.
    pub fn plan(&self, event: &ClaimedEvent) -> Vec<Planned> {
        match event.source.as_str() {
            "replicate" => vec![Planned {
                key: ActionKind::CompletePrediction.name().to_owned(),
                kind: ActionKind::CompletePrediction,
                publish: None,
            }],
            _ => Vec::new(),
        }
    }

    /// Runs one planned action. A publish action's work is the outbox write its attempt's
    /// record makes, so running it only checks it can be written.
    pub async fn run(&self, event: &ClaimedEvent, action: &Planned) -> Outcome {
        match action.kind {
            ActionKind::CompletePrediction => self.complete_prediction(event).await,
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
