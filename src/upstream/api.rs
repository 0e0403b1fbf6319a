//! A caller's API request forwarded to Go for the gateway (`usecase::gateway`): the URL
//! under the tenant's environment, the caller's headers (already stripped of credentials and
//! hop-by-hop headers by the gateway) plus the vault's bearer token and subscription key,
//! and the body streamed as it comes. The answer comes back unread: the gateway streams it
//! to the caller, reading ahead only a refusal's small body to classify it here.
//!
//! The module's invariants hold: the two secrets travel only in sensitive headers, nothing
//! of a header or body is logged (method, host, status and time only), no redirect is
//! followed, and errors carry no text from the network.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode, Url};

use super::client::{GoClient, bearer_authorization, endpoint, subscription_header};
use super::error::UpstreamError;
use super::{SUBSCRIPTION_KEY_HEADER, classify};
use crate::crypto::{AccessToken, SubscriptionKey};

/// One API request for Go.
pub struct ApiCall {
    pub method: Method,
    pub url: Url,
    /// The caller's headers, without credentials or hop-by-hop headers.
    pub headers: HeaderMap,
    pub body: reqwest::Body,
}

/// `{api_base_url}{path after /v2}?{query}`: `api_base_url` is the tenant's `{base}/v2`
/// (as a token carries it), `path` starts with `/v2/`.
pub fn api_url(api_base_url: &str, path: &str, query: Option<&str>) -> Result<Url, UpstreamError> {
    let base = api_base_url.strip_suffix("/v2").unwrap_or(api_base_url);
    let mut url = endpoint(base, path.trim_start_matches('/'))?;
    url.set_query(query);
    Ok(url)
}

impl GoClient {
    /// Sends `call` with `token` and `subscription_key` and returns Go's answer with its
    /// body unread. Fails only when no answer came (connection, TLS, timeout).
    pub async fn forward(
        &self,
        call: ApiCall,
        token: &AccessToken,
        subscription_key: &SubscriptionKey,
    ) -> Result<reqwest::Response, UpstreamError> {
        let ApiCall { method, url, mut headers, body } = call;
        headers.insert(AUTHORIZATION, bearer_authorization(token)?);
        headers.insert(SUBSCRIPTION_KEY_HEADER, subscription_header(subscription_key)?);
        let span = tracing::debug_span!(
            "upstream.request",
            otel.kind = "client",
            http.request.method = method.as_str(),
            server.address = url.host_str().unwrap_or(""),
            http.response.status_code = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let sent = self.http.request(method.clone(), url.clone()).headers(headers).body(body).send();
        let result = tracing::Instrument::instrument(sent, span.clone()).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) => {
                span.record("http.response.status_code", i64::from(r.status().as_u16()));
                tracing::debug!(method = %method, status = r.status().as_u16(), elapsed_ms, "Go API call forwarded");
            }
            Err(_) => tracing::debug!(method = %method, elapsed_ms, "Go API call failed without an answer"),
        }
        result.map_err(classify::from_reqwest)
    }
}

/// What a refused API call (status 400 and above) means, from its status, headers and
/// (read-ahead) body: Go's 429 and the gateway's quota 403 (pause), the subscription key
/// refused, the bearer token refused (401/403), or any other refusal with its `traceId`.
/// `token` and `subscription_key` are what the request carried: neither may pass for a
/// `traceId`.
pub fn classify_refusal(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    token: &AccessToken,
    subscription_key: &SubscriptionKey,
) -> UpstreamError {
    classify::classify_api_failure(status, headers, body, &[token.expose_secret(), subscription_key.expose_secret()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_path_and_query_under_the_environment() {
        let u = api_url("http://127.0.0.1:9/Demo/v2", "/v2/Customers/42", Some("$top=5&name=a%20b")).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9/Demo/v2/Customers/42?$top=5&name=a%20b");
        let u = api_url("https://goapi.poweroffice.net/v2", "/v2/Customers", None).unwrap();
        assert_eq!(u.as_str(), "https://goapi.poweroffice.net/v2/Customers");
    }
}
