//! The gRPC contracts of Sonora's services, generated once from `proto/` at build time.
//!
//! Every service depends on this crate for the messages and the client and server stubs;
//! nothing here does IO of its own.

/// `sonora.tts.v1`: the voice catalogue and speech synthesis served by `tts-inference`.
pub mod tts {
    pub mod v1 {
        tonic::include_proto!("sonora.tts.v1");
    }
}

/// `sonora.delivery.v1`: partner endpoints and signed webhook delivery, served by
/// `delivery-worker`.
pub mod delivery {
    pub mod v1 {
        tonic::include_proto!("sonora.delivery.v1");
    }
}
