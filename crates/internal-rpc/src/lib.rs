//! Calls between Sonora's services: who is calling, for whom, and over which channel.
//!
//! Every gRPC call between services carries a short-lived token signed by the calling service
//! (a JWT, EdDSA over Ed25519, in the `authorization` metadata). It names the caller (`sub`), the
//! service called (`aud`), expires within a minute, and, when the call acts for an API client,
//! carries that client's tenant, key id and scopes. Servers refuse a call without a valid token
//! (`UNAUTHENTICATED`) or whose caller or scopes the method does not allow (`PERMISSION_DENIED`);
//! the standard health service stays open. Where a call acts for a client, the tenant comes from
//! the token, never from the request body.
//!
//! - [`keys`]: the signing key of a calling service (`isk_…`) and the public keys a server
//!   trusts (`<service>=ipk_…`, several per service during a rotation).
//! - [`token`]: the claims, the [`token::Minter`] that signs and caches tokens, and the
//!   [`token::Verifier`].
//! - [`server`]: the [`server::Guard`] tower layer every gRPC server runs behind, the
//!   per-method [`server::Policy`], and the [`server::Caller`] that handlers read.
//! - [`client`]: [`client::PeerSettings`] (URL, connect timeout, per-call deadline) and
//!   [`client::Peer`], the one place that builds channels to other services, with the token and
//!   the trace context attached to every call.
//! - [`settings`]: `INTERNAL_AUTH_KEY`, `INTERNAL_AUTH_KEY_FILE` and
//!   `INTERNAL_AUTH_TRUSTED_KEYS`.
//!
//! Why Ed25519 key pairs rather than one shared HMAC key: with a shared key, every service that
//! can verify a token can also mint one in any service's name for any tenant, so the services that
//! only receive calls (tts-inference runs espeak-ng on client text; delivery-worker connects to
//! partner URLs) would hold the power to read every tenant's partner secrets. With key pairs, a
//! service that only serves holds no signing key at all, and `sub` is proven, so a method can be
//! limited to the services that need it.

pub mod client;
pub mod keys;
pub mod server;
pub mod settings;
pub mod token;

pub use client::{OnBehalfOf, Peer, PeerChannel, PeerSettings, on_behalf};
pub use keys::{SigningKey, TrustedKeys};
pub use server::{Access, Caller, Guard, Policy, caller};
pub use settings::InternalAuthSettings;
pub use token::{Minter, Principal, Scope, Scopes, Verifier};
