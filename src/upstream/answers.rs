//! What Go's successful answers become: the token grant, ClientIntegrationInformation, and
//! the two onboarding answers. Plain data, read by `parse` and returned by the client; a
//! leaf that imports nothing of its siblings.
//!
//! Secrets in them are already their own types ([`AccessToken`], [`ClientKey`]), with
//! redacted `Debug`.

use std::time::Duration;

use crate::crypto::{AccessToken, ClientKey};

/// A token from Go's token endpoint.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The bearer token (its `Debug` is redacted).
    pub access_token: AccessToken,
    /// Always `"Bearer"` (Go's casing varies; we normalise).
    pub token_type: String,
    /// Lifetime Go stated, 1 s ..= 1 day.
    pub expires_in: Duration,
}

/// What `GET /v2/ClientIntegrationInformation` says about the client behind a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIntegrationInfo {
    /// Go's id of the client, number or string in Go's answer, as text here.
    pub client_id: Option<String>,
    /// The client's name in Go.
    pub client_name: Option<String>,
    /// Privileges granted to the integration for this client.
    pub valid_privileges: Vec<String>,
    /// Privileges the integration asks for that this client did not grant.
    pub invalid_privileges: Vec<String>,
}

/// What `Onboarding/Initiate` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardingSession {
    /// Where to send the user's browser: an absolute http(s) URL.
    pub temporary_url: String,
    /// When the temporary URL stops working (`ValidUntilDateTimeOffset`), in milliseconds
    /// since the Unix epoch.
    pub valid_until_ms: i64,
}

/// One client the user activated, from `Onboarding/Finalize`.
#[derive(Debug)]
pub struct OnboardedClient {
    /// The new client key (its `Debug` is redacted).
    pub client_key: ClientKey,
    /// The client's name in Go.
    pub client_name: Option<String>,
    /// The client's organization number, as Go wrote it (not validated here).
    pub organization_number: Option<String>,
}

/// What `Onboarding/Finalize` returns.
#[derive(Debug)]
pub struct OnboardingResult {
    /// One entry per activated client; may be empty.
    pub clients: Vec<OnboardedClient>,
    /// The e-mail address of the Go user who approved.
    pub user_email: Option<String>,
}
