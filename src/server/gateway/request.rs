//! A gateway request read from the wire: the tenant and Go's path from the URL
//! (`/<tenant-id>/v2/<path>?<query>`), and the headers that pass each way.
//!
//! What never passes to Go: the caller's `Authorization`, any subscription-key header (any
//! name that contains `subscription-key`) or `subscription-key` query parameter (the vault
//! adds its own credentials), cookies, `Host`, `Expect` and the hop-by-hop headers (RFC 9110
//! §7.6.1, and every header `Connection` names). What never passes back: hop-by-hop
//! headers, `Set-Cookie` (a cookie of Go's is no business of the caller's), and any
//! credential header, should Go ever echo one.

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

/// A header that carries a credential of Go's gateway or OAuth server.
fn credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name.as_str().contains("subscription-key")
}

/// The caller's headers Go receives (module docs for what is left out).
pub fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let dropped = hop_by_hop(name, headers)
            || credential(name)
            || name == header::HOST
            || name == header::COOKIE
            || name == header::EXPECT
            || name == header::CONTENT_LENGTH;
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Go's headers the caller receives (module docs).
pub fn answer_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !(hop_by_hop(name, headers) || credential(name) || name == header::SET_COOKIE) {
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
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "content-type", "x-request-id"]);

        let mut back = HeaderMap::new();
        for (n, v) in [
            ("set-cookie", "ARRAffinity=1"),
            ("connection", "close"),
            ("ocp-apim-subscription-key", "echo"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ] {
            back.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let names: Vec<String> = answer_headers(&back).keys().map(|n| n.as_str().to_owned()).collect();
        assert_eq!(names, ["content-type", "content-length"]);
    }
}
