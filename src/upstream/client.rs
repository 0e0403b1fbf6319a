//! [`GoClient`]: the HTTP client for Go (rustls with the ring provider, no redirects,
//! bounded answers), the token request and ClientIntegrationInformation, and the helpers the
//! onboarding calls share: [`endpoint`] (which base URLs are accepted), the sensitive header
//! values, and [`refused`] (the one place a classified refusal is logged with its
//! `traceId`).
//!
//! The invariants are those of the module (`upstream/mod.rs`): secrets only in sensitive
//! headers built in `Zeroizing` buffers, no headers or bodies logged, no redirect followed,
//! one TLS stack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use rustls_platform_verifier::BuilderVerifierExt as _;
use zeroize::Zeroizing;

use super::answers::{ClientIntegrationInfo, TokenGrant};
use super::error::UpstreamError;
use super::{classify, parse};
use crate::crypto::{AccessToken, ClientKey, SubscriptionKey};

/// The gateway's subscription key header (`Ocp-Apim-Subscription-Key`).
pub const SUBSCRIPTION_KEY_HEADER: HeaderName = HeaderName::from_static("ocp-apim-subscription-key");
/// The one grant Go supports, sent as the whole form body.
pub const TOKEN_REQUEST_BODY: &str = "grant_type=client_credentials";
/// Largest answer body we read; Go's answers are a few KiB at most.
const MAX_BODY: usize = 64 * 1024;

/// Timeouts for calls to Go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole request, from sending to the last byte of the answer.
    pub request_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(5), request_timeout: Duration::from_secs(10) }
    }
}

/// The HTTP client for Go. Cheap to clone (shares one connection pool).
#[derive(Debug, Clone)]
pub struct GoClient {
    pub(super) http: reqwest::Client,
}

/// An answer read in full (bounded), before classification. The body may hold a token, so
/// it is wiped on drop.
pub(super) struct RawResponse {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Zeroizing<Vec<u8>>,
}

impl GoClient {
    /// Builds the client: rustls with the ring provider and the platform's certificate
    /// verifier, no redirects, the given timeouts. Plain `http://` base URLs work too (the
    /// simulator). Fails if the system has no CA certificates.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        // An explicit provider: `ClientConfig::builder()` would consult the process default,
        // and with two providers linked in it panics.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::config(format!("TLS setup failed: {e}")))?
            .with_platform_verifier()
            .map_err(|e| UpstreamError::config(format!("TLS setup failed: {e}")))?
            .with_no_client_auth();
        // reqwest is built without HTTP/2 here; say so in ALPN rather than leave it unset.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("pogo-vault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| UpstreamError::config("the HTTP client could not be built"))?;
        Ok(Self { http })
    }

    /// `POST {base_url}/OAuth/Token` with the client credentials grant (go-api.md, "Token").
    ///
    /// `base_url` is the environment's base (`https://goapi.poweroffice.net` or `.../Demo`);
    /// one trailing `/` is ignored.
    pub async fn request_token(
        &self,
        base_url: &str,
        application_key: &str,
        client_key: &ClientKey,
        subscription_key: &SubscriptionKey,
    ) -> Result<TokenGrant, UpstreamError> {
        let url = endpoint(base_url, "OAuth/Token")?;
        let authorization = basic_authorization(application_key, client_key)?;
        let request = self
            .http
            .post(url.clone())
            .header(AUTHORIZATION, authorization)
            .header(SUBSCRIPTION_KEY_HEADER, subscription_header(subscription_key)?)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(TOKEN_REQUEST_BODY);
        let response = self.send(request, "POST", &url).await?;
        if response.status.is_success() {
            parse::token_grant(&response.body)
        } else {
            let sent = [application_key, client_key.expose_secret(), subscription_key.expose_secret()];
            Err(refused(
                &url,
                classify::classify_token_failure(response.status, &response.headers, &response.body, &sent),
            ))
        }
    }

    /// `GET {base_url}/v2/ClientIntegrationInformation`: who the token belongs to and what
    /// it may do. Needs no privilege; proves a freshly stored key works.
    pub async fn client_integration_information(
        &self,
        base_url: &str,
        token: &AccessToken,
        subscription_key: &SubscriptionKey,
    ) -> Result<ClientIntegrationInfo, UpstreamError> {
        let url = endpoint(base_url, "v2/ClientIntegrationInformation")?;
        let request = self
            .http
            .get(url.clone())
            .header(AUTHORIZATION, bearer_authorization(token)?)
            .header(SUBSCRIPTION_KEY_HEADER, subscription_header(subscription_key)?)
            .header(ACCEPT, "application/json");
        let response = self.send(request, "GET", &url).await?;
        if response.status.is_success() {
            parse::client_integration_info(&response.body)
        } else {
            let sent = [token.expose_secret(), subscription_key.expose_secret()];
            Err(refused(
                &url,
                classify::classify_api_failure(response.status, &response.headers, &response.body, &sent),
            ))
        }
    }

    /// Sends a request and reads the whole answer (at most 64 KiB), logging method, path,
    /// status and elapsed time only.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &'static str,
        url: &Url,
    ) -> Result<RawResponse, UpstreamError> {
        let started = Instant::now();
        // Method, host and status only: no path, no header, no body.
        let span = tracing::debug_span!(
            "upstream.request",
            otel.kind = "client",
            http.request.method = method,
            server.address = url.host_str().unwrap_or(""),
            http.response.status_code = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(
            async {
                let mut response = request.send().await.map_err(classify::from_reqwest)?;
                let status = response.status();
                tracing::Span::current().record("http.response.status_code", i64::from(status.as_u16()));
                let headers = std::mem::take(response.headers_mut());
                // Reserve up front so the buffer holding a token is not reallocated (and the old
                // copy left unwiped) while reading.
                let hint = response.content_length().unwrap_or(0).min(MAX_BODY as u64) as usize;
                let mut body = Zeroizing::new(Vec::with_capacity(hint.max(4096)));
                while let Some(chunk) = response.chunk().await.map_err(classify::from_reqwest)? {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(UpstreamError::protocol("answer body larger than 64 KiB"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(RawResponse { status, headers, body })
            },
            span,
        )
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) => tracing::debug!(method, path = url.path(), status = r.status.as_u16(), elapsed_ms, "Go request"),
            Err(e) => tracing::debug!(method, path = url.path(), error = %e, elapsed_ms, "Go request failed"),
        }
        result
    }
}

/// Logs a classified refusal with its `traceId` (what PowerOffice support asks for), and
/// passes it on.
pub(super) fn refused(url: &Url, e: UpstreamError) -> UpstreamError {
    match e.trace_id() {
        Some(trace_id) => tracing::info!(path = url.path(), error = %e, trace_id = %trace_id, "Go refused a request"),
        None => tracing::debug!(path = url.path(), error = %e, "Go refused a request"),
    }
    e
}

/// `{base_url}/{path}` with one trailing `/` trimmed from the base. Only plain http(s) URLs
/// without credentials, query or fragment are accepted: userinfo would make reqwest send its
/// own Basic header, and a query would be sent along with every credential request.
pub(super) fn endpoint(base_url: &str, path: &str) -> Result<Url, UpstreamError> {
    let base = base_url.strip_suffix('/').unwrap_or(base_url);
    let bad = || UpstreamError::config("the Go base URL must be an http:// or https:// URL with a host and no query");
    let url = Url::parse(&format!("{base}/{path}")).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if plain { Ok(url) } else { Err(bad()) }
}

/// `Basic base64(application_key ":" client_key)`, assembled in wiped buffers.
fn basic_authorization(application_key: &str, client_key: &ClientKey) -> Result<HeaderValue, UpstreamError> {
    let secret = client_key.expose_secret();
    let mut credentials = Zeroizing::new(String::with_capacity(application_key.len() + 1 + secret.len()));
    credentials.push_str(application_key);
    credentials.push(':');
    credentials.push_str(secret);
    let mut value = Zeroizing::new(String::with_capacity(6 + credentials.len().div_ceil(3) * 4));
    value.push_str("Basic ");
    STANDARD.encode_string(credentials.as_bytes(), &mut value);
    sensitive(&value, "the Basic credentials are not a valid header value")
}

pub(super) fn bearer_authorization(token: &AccessToken) -> Result<HeaderValue, UpstreamError> {
    let secret = token.expose_secret();
    let mut value = Zeroizing::new(String::with_capacity(7 + secret.len()));
    value.push_str("Bearer ");
    value.push_str(secret);
    sensitive(&value, "the access token is not a valid header value")
}

pub(super) fn subscription_header(key: &SubscriptionKey) -> Result<HeaderValue, UpstreamError> {
    sensitive(key.expose_secret(), "the subscription key is not a valid header value")
}

/// A header value marked sensitive (kept out of hyper's debug output and HPACK tables).
fn sensitive(value: &str, what: &'static str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| UpstreamError::config(what))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_trims_one_slash_and_refuses_odd_urls() {
        let u = endpoint("https://goapi.poweroffice.net/Demo/", "OAuth/Token").expect("ok");
        assert_eq!(u.as_str(), "https://goapi.poweroffice.net/Demo/OAuth/Token");
        let u = endpoint("http://127.0.0.1:8080", "v2/ClientIntegrationInformation").expect("ok");
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/v2/ClientIntegrationInformation");
        for bad in ["", "goapi.poweroffice.net", "ftp://x", "https://u:p@x", "https://x/?a=b", "file:///tmp"] {
            assert!(matches!(endpoint(bad, "OAuth/Token"), Err(UpstreamError::Config { .. })), "{bad}");
        }
    }

    #[test]
    fn basic_header_is_base64_of_app_colon_key_and_sensitive() {
        let key = ClientKey::parse("123e4567-e89b-12d3-a456-426614173f9a").expect("guid");
        let v = basic_authorization("app", &key).expect("ok");
        assert!(v.is_sensitive());
        let expected = format!("Basic {}", STANDARD.encode("app:123e4567-e89b-12d3-a456-426614173f9a"));
        assert_eq!(v.to_str().expect("ascii"), expected);
        assert!(!format!("{v:?}").contains("MTIz"), "sensitive values print as Sensitive");
    }

    #[test]
    fn client_builds_with_ring_and_platform_roots() {
        GoClient::new(&UpstreamConfig::default()).expect("client builds");
    }
}
