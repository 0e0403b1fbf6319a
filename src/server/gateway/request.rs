//! A gateway request read from the wire: the tenant and Go's path from the URL
//! (`/<tenant-id>/v2/<path>?<query>`), and the headers that pass each way.
//!
//! To Go pass only the caller's headers of [`FORWARDED`], a list: content negotiation,
//! conditions, the body's type and trace context. Everything else stays behind, so the
//! caller's `Authorization`, any subscription-key header (the vault adds its own
//! credentials; the `subscription-key` query parameter is dropped by `domain::ApiQuery`),
//! cookies, hop-by-hop headers, and the headers that would make Go's gateway or ASP.NET do
//! something the policy did not admit (`Ocp-Apim-Trace`, which would have the gateway write
//! a trace holding the vault's credentials; `X-HTTP-Method-Override`; `X-Original-URL`;
//! `X-Forwarded-*`) never reach Go. `Accept-Encoding` is always `identity`: the gateway
//! classifies Go's refusals from their bodies, and streams what it does not read.
//!
//! Back to the caller pass only Go's headers of [`ANSWERED`], a list too: the body's type
//! and length, caching and ranges, `Retry-After`, `WWW-Authenticate` and the paging count.
//! So no cookie of Go's, no Azure API Management header (a trace location among them), no
//! `Location` pointing at Go itself, no `Alt-Svc` or `Strict-Transport-Security` meant for
//! Go's origin, and no credential, should Go ever echo one.

use http::header::{self, HeaderMap, HeaderName};

use crate::domain::{ApiMethod, ApiPath, ApiQuery, InvalidInput, TenantId};

/// What a request names: the tenant, and the method, path and query for Go.
#[derive(Debug)]
pub struct Target {
    pub tenant: TenantId,
    pub method: ApiMethod,
    pub path: ApiPath,
    pub query: ApiQuery,
}

/// Field names the errors use, as a caller knows the parts of its URL.
pub const TENANT_FIELD: &str = "tenant id (the URL path's first segment)";
pub const PATH_FIELD: &str = "path (after the tenant id: /v2/...)";

/// Parses `/<tenant-id>/v2/<path>?<query>` and the method. The tenant comes first: a
/// refusal can name it (and the policy decides on it) even when the rest is wrong.
pub fn parse_tenant(uri: &http::Uri) -> Result<(TenantId, &str), InvalidInput> {
    let path = uri.path();
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (tenant, after) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Ok((TenantId::parse_field(TENANT_FIELD, tenant)?, after))
}

/// The rest of [`parse_tenant`]: method, Go's path and the query.
pub fn parse_target(method: &http::Method, uri: &http::Uri) -> Result<Target, InvalidInput> {
    let (tenant, after) = parse_tenant(uri)?;
    let method = ApiMethod::parse_field("method", method.as_str())?;
    let path = ApiPath::parse_field(PATH_FIELD, after)?;
    let query = ApiQuery::parse_field("query", uri.query())?;
    Ok(Target { tenant, method, path, query })
}

/// The caller's headers Go receives (lowercase names).
pub const FORWARDED: [&str; 17] = [
    "accept",
    "accept-language",
    "cache-control",
    "content-language",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-unmodified-since",
    "prefer",
    "range",
    "traceparent",
    "tracestate",
    "user-agent",
    "x-correlation-id",
    "x-request-id",
    "if-range",
];

/// Go's headers the caller receives (lowercase names).
pub const ANSWERED: [&str; 14] = [
    "accept-ranges",
    "cache-control",
    "content-disposition",
    "content-language",
    "content-length",
    "content-range",
    "content-type",
    "etag",
    "expires",
    "last-modified",
    "retry-after",
    "vary",
    "www-authenticate",
    "x-total-count",
];

/// The hop-by-hop headers (RFC 9110 §7.6.1, and the older ones still seen).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is a hop-by-hop header of this message (fixed, or named by `Connection`).
fn hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
}

/// The caller's headers Go receives: those of [`FORWARDED`] (module docs), and
/// `Accept-Encoding: identity`.
pub fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(FORWARDED.len() + 1);
    for (name, value) in headers {
        if FORWARDED.contains(&name.as_str()) && !hop_by_hop(name, headers) {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
    out
}

/// Go's headers the caller receives: those of [`ANSWERED`] (module docs).
pub fn answer_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(ANSWERED.len());
    for (name, value) in headers {
        if ANSWERED.contains(&name.as_str()) && !hop_by_hop(name, headers) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn the_url_names_the_tenant_then_gos_path() {
        let t = parse_target(&http::Method::GET, &uri("/acme/v2/Customers?$top=5&subscription-key=x")).unwrap();
        assert_eq!((t.tenant.as_str(), t.path.as_sent()), ("acme", "/v2/Customers"));
        assert_eq!(t.query.forward(), Some("$top=5"));
        let e = parse_target(&http::Method::GET, &uri("/Acme/v2/Customers")).unwrap_err();
        assert_eq!(e.field, TENANT_FIELD);
        let e = parse_target(&http::Method::GET, &uri("/acme/v1/Customers")).unwrap_err();
        assert_eq!(e.field, PATH_FIELD);
        let e = parse_target(&http::Method::GET, &uri("/acme")).unwrap_err();
        assert_eq!(e.field, PATH_FIELD);
        let e = parse_target(&http::Method::TRACE, &uri("/acme/v2/Customers")).unwrap_err();
        assert_eq!(e.field, "method");
        let (tenant, _) = parse_tenant(&uri("/acme/v9/whatever")).unwrap();
        assert_eq!(tenant.as_str(), "acme", "the tenant is known even when the rest is wrong");
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_never_pass() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer caller-token"),
            ("ocp-apim-subscription-key", "caller-key"),
            ("x-subscription-key", "caller-key"),
            ("cookie", "a=b"),
            ("host", "vault"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("expect", "100-continue"),
            ("content-length", "12"),
            ("ocp-apim-trace", "true"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/v2/Salaries"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept-encoding", "gzip"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "content-type", "x-request-id", "accept-encoding"]);
        assert_eq!(out["accept-encoding"], "identity");

        let mut back = HeaderMap::new();
        for (n, v) in [
            ("set-cookie", "ARRAffinity=1"),
            ("connection", "close"),
            ("ocp-apim-subscription-key", "echo"),
            ("ocp-apim-trace-location", "https://apim/trace"),
            ("location", "https://goapi.poweroffice.net/v2/Customers/1"),
            ("alt-svc", "h3=\":443\""),
            ("strict-transport-security", "max-age=31536000"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ] {
            back.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let names: Vec<String> = answer_headers(&back).keys().map(|n| n.as_str().to_owned()).collect();
        assert_eq!(names, ["content-type", "content-length"]);
    }
}
