//! The generated wire contract (`proto/pogo_vault/v1/*.proto`, compiled by `build.rs`).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("pogo_vault.v1");
}

/// The encoded descriptor set of every proto file (imports included), for server
/// reflection and the method-to-role test.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pogo_vault_descriptor");

// Redacted Debug for the messages that carry a secret (see `build.rs`, `skip_debug`).
macro_rules! redacted_debug {
    ($ty:ident { $($field:ident),* } hides $($secret:ident),*) => {
        impl std::fmt::Debug for v1::$ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    $(.field(stringify!($secret), &"[redacted]"))*
                    .finish()
            }
        }
    };
}

redacted_debug!(GetAccessTokenResponse { token_type, expires_at, environment, api_base_url } hides access_token, subscription_key);
redacted_debug!(RegisterClientKeyRequest { tenant_id, environment, display_name, labels, skip_validation, organization_number } hides client_key);
redacted_debug!(RotateClientKeyRequest { tenant_id } hides client_key);
redacted_debug!(CompleteOnboardingRequest { onboarding_id, go_status } hides onboarding_token, subject);
redacted_debug!(BeginOnboardingRequest { environment, redirect_url, organization_number, tenant_id_prefix } hides subject);
redacted_debug!(SetIntegrationRequest { environment, application_key, base_url, allow_custom_base_url } hides subscription_key);

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn secret_bearing_messages_redact_their_debug() {
        let r = v1::RegisterClientKeyRequest {
            client_key: "11111111-2222-4333-8444-555555555555".into(),
            ..Default::default()
        };
        assert!(!format!("{r:?}").contains("1111"));
        let t = v1::GetAccessTokenResponse {
            access_token: "eyJsecret".into(),
            subscription_key: "subkey123".into(),
            ..Default::default()
        };
        let s = format!("{t:?}");
        assert!(!s.contains("eyJ") && !s.contains("subkey"), "{s}");
        let c = v1::CompleteOnboardingRequest { onboarding_token: "tok-secret".into(), ..Default::default() };
        assert!(!format!("{c:?}").contains("tok-secret"));
        let i = v1::SetIntegrationRequest { subscription_key: "subkey-secret".into(), ..Default::default() };
        assert!(!format!("{i:?}").contains("subkey-secret"));
    }
}
