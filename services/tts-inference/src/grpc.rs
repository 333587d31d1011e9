//! The `sonora.tts.v1.TtsInference` gRPC service.

use std::{path::PathBuf, sync::Arc};

use sonora_proto::tts::v1::{
    ListVoicesRequest, ListVoicesResponse, Speaker, Voice, tts_inference_server::TtsInference,
};
use tonic::{Request, Response, Status};

use crate::catalogue::{self, CatalogueError, VoiceInfo};

pub struct TtsService {
    pub voices_dir: Arc<PathBuf>,
    pub default_voice: Arc<str>,
}

impl From<CatalogueError> for Status {
    fn from(error: CatalogueError) -> Self {
        tracing::error!(%error, "voice catalogue");
        match error {
            CatalogueError::Missing { .. } => Status::not_found(error.to_string()),
            CatalogueError::Directory { .. } | CatalogueError::BadConfig { .. } => {
                Status::internal("the voice catalogue cannot be read")
            }
        }
    }
}

fn to_proto(voice: VoiceInfo, default_voice: &str) -> Voice {
    Voice {
        is_default: voice.id == default_voice,
        id: voice.id,
        name: voice.name,
        language: voice.language,
        sample_rate: voice.sample_rate,
        quality: voice.quality,
        speakers: voice
            .speakers
            .into_iter()
            .map(|(id, name)| Speaker { id, name })
            .collect(),
    }
}

#[tonic::async_trait]
impl TtsInference for TtsService {
    #[tracing::instrument(skip_all)]
    async fn list_voices(
        &self,
        _request: Request<ListVoicesRequest>,
    ) -> Result<Response<ListVoicesResponse>, Status> {
        let dir = Arc::clone(&self.voices_dir);
        let voices = tokio::task::spawn_blocking(move || catalogue::scan(&dir))
            .await
            .map_err(|_| Status::internal("the voice catalogue scan failed"))??;
        Ok(Response::new(ListVoicesResponse {
            voices: voices
                .into_iter()
                .map(|v| to_proto(v, &self.default_voice))
                .collect(),
        }))
    }
}
