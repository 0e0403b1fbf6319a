//! Go's onboarding flow, the client side (go-api.md, "Onboarding"): `Onboarding/Initiate`
//! starts a session and returns the URL to send the user's browser to; Go sends the browser
//! back to our redirect URI with `status` and an onboarding token; `Onboarding/Finalize`
//! trades that token for the client key(s) the user activated.
//!
//! Invariants:
//! - Both calls carry the subscription key header and no bearer token.
//! - The onboarding token is a secret ([`OnboardingToken`]): it buys client keys once. It is
//!   only exposed to build the Finalize body; errors never quote it (nor anything we sent:
//!   see [`UpstreamError::OnboardingRejected`]).
//! - Client keys from Finalize are parsed into [`ClientKey`](crate::crypto::ClientKey) at once; a malformed one fails
//!   the whole answer as a protocol error, without quoting it.

use std::fmt;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use zeroize::Zeroizing;

use super::answers::{OnboardingResult, OnboardingSession};
use super::client::{GoClient, SUBSCRIPTION_KEY_HEADER, endpoint, refused, subscription_header};
use super::error::UpstreamError;
use super::{classify, parse};
use crate::crypto::SubscriptionKey;
use crate::domain::InvalidInput;

/// The onboarding token Go appends to the redirect URI (`token=`): single use, short-lived,
/// and worth the client keys of every client the user activated, so a secret.
///
/// Zeroize contract: held in a `SecretString`, wiped on drop; `Debug` prints a fixed
/// redaction and there is no `Display`. Exposed only to build the Finalize request.
pub struct OnboardingToken(SecretString);

impl fmt::Debug for OnboardingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnboardingToken([redacted])")
    }
}

impl OnboardingToken {
    /// Longest accepted token. Go's are far shorter; the bound keeps a hostile redirect from
    /// making us forward megabytes.
    pub const MAX_LEN: usize = 4096;

    /// 1 to 4096 printable ASCII characters without spaces, after trimming surrounding
    /// white space. The error names `field` and never echoes the input.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, InvalidInput> {
        let t = s.trim();
        if t.is_empty() || t.len() > Self::MAX_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidInput::new(
                field,
                format!(
                    "an onboarding token is 1 to {} printable ASCII characters without spaces \
                     (the value given has {} characters): pass the `token` value PowerOffice Go \
                     put on the redirect URL, unchanged",
                    Self::MAX_LEN,
                    t.chars().count()
                ),
            ));
        }
        Ok(Self(SecretString::from(t)))
    }

    /// [`Self::parse_field`] with the field name `onboarding_token`.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::parse_field("onboarding_token", s)
    }

    /// The plaintext token. Caller: the Finalize request body.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

#[derive(Serialize)]
struct InitiateBody<'a> {
    #[serde(rename = "ApplicationKey")]
    application_key: &'a str,
    #[serde(rename = "ClientOrganizationNo", skip_serializing_if = "Option::is_none")]
    client_organization_no: Option<&'a str>,
    #[serde(rename = "RedirectUri")]
    redirect_uri: &'a str,
}

#[derive(Serialize)]
struct FinalizeBody<'a> {
    #[serde(rename = "OnboardingToken")]
    onboarding_token: &'a str,
}

impl GoClient {
    /// `POST {api_base_url_root}/v2/Onboarding/Initiate` (go-api.md, "Onboarding" step 1).
    ///
    /// `api_base_url_root` is the environment's base (`https://goapi.poweroffice.net` or
    /// `.../Demo`), as for [`GoClient::request_token`]. `client_organization_no` limits the
    /// session to that one client; without it the user may activate several. The redirect
    /// URI must be whitelisted with PowerOffice (scheme, host and path; its query rides
    /// along). A 400 comes back as [`UpstreamError::OnboardingRejected`].
    pub async fn onboarding_initiate(
        &self,
        api_base_url_root: &str,
        subscription_key: &SubscriptionKey,
        application_key: &str,
        client_organization_no: Option<&str>,
        redirect_uri: &str,
    ) -> Result<OnboardingSession, UpstreamError> {
        let url = endpoint(api_base_url_root, "v2/Onboarding/Initiate")?;
        // An empty string where a field is optional fails with "field is required" (go-api.md,
        // "Errors elsewhere"): leave the field out instead.
        let client_organization_no = client_organization_no.map(str::trim).filter(|o| !o.is_empty());
        let body = serde_json::to_vec(&InitiateBody { application_key, client_organization_no, redirect_uri })
            .map_err(|_| UpstreamError::config("the Onboarding/Initiate body could not be encoded"))?;
        let request = self
            .http
            .post(url.clone())
            .header(SUBSCRIPTION_KEY_HEADER, subscription_header(subscription_key)?)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body);
        let response = self.send(request, "POST", &url).await?;
        if response.status.is_success() {
            parse::onboarding_session(&response.body)
        } else {
            let sent = [
                application_key,
                redirect_uri,
                client_organization_no.unwrap_or_default(),
                subscription_key.expose_secret(),
            ];
            Err(refused(
                &url,
                classify::classify_onboarding_failure(response.status, &response.headers, &response.body, &sent),
            ))
        }
    }

    /// `POST {api_base_url_root}/v2/Onboarding/Finalize` (go-api.md, "Onboarding" step 4):
    /// trades the onboarding token for the activated clients' keys. A token that is
    /// invalid, expired or already used gets [`UpstreamError::OnboardingRejected`].
    pub async fn onboarding_finalize(
        &self,
        api_base_url_root: &str,
        subscription_key: &SubscriptionKey,
        onboarding_token: &OnboardingToken,
    ) -> Result<OnboardingResult, UpstreamError> {
        let url = endpoint(api_base_url_root, "v2/Onboarding/Finalize")?;
        // The body holds the token: encode into a buffer we wipe, hand reqwest one copy (which
        // is beyond our reach once sent, like the header values in `request_token`).
        let body = Zeroizing::new(
            serde_json::to_vec(&FinalizeBody { onboarding_token: onboarding_token.expose_secret() })
                .map_err(|_| UpstreamError::config("the Onboarding/Finalize body could not be encoded"))?,
        );
        let request = self
            .http
            .post(url.clone())
            .header(SUBSCRIPTION_KEY_HEADER, subscription_header(subscription_key)?)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body.to_vec());
        let response = self.send(request, "POST", &url).await?;
        if response.status.is_success() {
            parse::onboarding_result(&response.body)
        } else {
            let sent = [onboarding_token.expose_secret(), subscription_key.expose_secret()];
            Err(refused(
                &url,
                classify::classify_onboarding_failure(response.status, &response.headers, &response.body, &sent),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onboarding_token_rules_and_redaction() {
        let t = OnboardingToken::parse("  abc.DEF-123_~  ").expect("ok");
        assert_eq!(t.expose_secret(), "abc.DEF-123_~");
        assert_eq!(format!("{t:?}"), "OnboardingToken([redacted])");
        OnboardingToken::parse(&"a".repeat(OnboardingToken::MAX_LEN)).expect("max length");
        for bad in ["", "   ", "a b", "tøken", "a\u{0}b", &"a".repeat(OnboardingToken::MAX_LEN + 1)] {
            let err = OnboardingToken::parse(bad).expect_err("must be rejected");
            assert_eq!(err.field, "onboarding_token");
        }
        let err = OnboardingToken::parse("SECRET SECRET").expect_err("space");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert_eq!(OnboardingToken::parse_field("token", "").expect_err("empty").field, "token");
    }

    #[test]
    fn request_bodies_have_gos_field_names() {
        let with = serde_json::to_string(&InitiateBody {
            application_key: "app",
            client_organization_no: Some("987654321"),
            redirect_uri: "https://x/cb?s=1",
        })
        .expect("json");
        assert_eq!(
            with,
            r#"{"ApplicationKey":"app","ClientOrganizationNo":"987654321","RedirectUri":"https://x/cb?s=1"}"#
        );
        let without = serde_json::to_string(&InitiateBody {
            application_key: "app",
            client_organization_no: None,
            redirect_uri: "r",
        })
        .expect("json");
        assert_eq!(without, r#"{"ApplicationKey":"app","RedirectUri":"r"}"#);
        let fin = serde_json::to_string(&FinalizeBody { onboarding_token: "t" }).expect("json");
        assert_eq!(fin, r#"{"OnboardingToken":"t"}"#);
    }
}
