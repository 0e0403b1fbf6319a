//! The PowerOffice Go HTTP client: the token exchange (OAuth 2.0 client credentials), the
//! onboarding calls, and the API calls the vault itself makes, with every failure classified into
//! [`UpstreamError`]. The protocol is in `shared/go-api.md`.
//!
//! Invariants:
//! - Secrets (client key, subscription key, token) travel only in headers marked sensitive;
//!   the Basic credentials are assembled in `Zeroizing` buffers. (Copies inside reqwest and
//!   hyper's buffers are beyond our reach; they are not logged.)
//! - Logs name method, path, status and elapsed time; never headers or bodies.
//! - Errors never carry text from the network or from reqwest (see [`error`]).
//! - No redirect is followed: a credential request must never be replayed to another host.
//! - One TLS stack: rustls with the ring provider passed explicitly (never the process
//!   default, which may be unset or different), certificates checked by the platform verifier.
//!
//! Onboarding (`Onboarding/Initiate`, `Onboarding/Finalize`) lives in `onboarding`, as
//! further methods on [`GoClient`] built on [`GoClient::send`] and the JSON helpers in
//! `parse`; its token is the secret type [`OnboardingToken`].
//!
//! Files, in one-way order (each uses only those before it): `error` (the error types),
//! `answers` (what Go's successful answers become), `parse` (reading Go's JSON),
//! `classify` (a failed answer or reqwest failure into an [`UpstreamError`]), `client`
//! ([`GoClient`]: the token and API calls, and the helpers onboarding shares),
//! `onboarding`, `api` (a caller's request forwarded for the gateway). This file only
//! re-exports.

mod answers;
mod api;
mod classify;
mod client;
mod error;
#[cfg(test)]
mod fuzz;
mod onboarding;
mod parse;

pub use answers::{ClientIntegrationInfo, OnboardedClient, OnboardingResult, OnboardingSession, TokenGrant};
pub use api::{ApiCall, api_url, classify_refusal};
pub use client::{GoClient, SUBSCRIPTION_KEY_HEADER, TOKEN_REQUEST_BODY, UpstreamConfig};
pub use error::{SubscriptionKeyProblem, TraceId, UpstreamError};
pub use onboarding::OnboardingToken;
