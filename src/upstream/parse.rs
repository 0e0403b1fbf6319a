//! Reading Go's JSON answers: key lookup that ignores case (Go's casing varies), the token
//! grant, ClientIntegrationInformation, and the error shapes of the gateway and the OAuth
//! server.
//!
//! Invariant: no function here returns or formats text from the body except the fields it
//! is asked for; `serde_json`'s own error messages (which can quote the input) are dropped.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::UpstreamError;
use super::{ClientIntegrationInfo, TokenGrant};
use crate::crypto::AccessToken;

/// Longest accepted `expires_in`: a token that claims to live more than a day is not one
/// Go issued (it issues 10 to 20 minutes), and caching it that long would be unsafe.
pub(crate) const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted access token. Go's JWTs are around 1-2 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest OAuth error code we keep.
const MAX_ERROR_CODE_LEN: usize = 64;

/// Looks up `key` in a JSON object: the exact spelling first, then ignoring ASCII case.
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// Like [`get_ci`], but moves the value out, so a secret string is not copied.
fn take_ci(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if let Some(v) = obj.remove(key) {
        return Some(v);
    }
    let actual = obj.keys().find(|k| k.eq_ignore_ascii_case(key))?.clone();
    obj.remove(&actual)
}

fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Parses a 2xx token answer: `access_token`, `token_type` (any case of "bearer"),
/// `expires_in` (number or numeric string, 1 s ..= 1 day).
pub(crate) fn token_grant(body: &[u8]) -> Result<TokenGrant, UpstreamError> {
    let mut obj = json_object(body).ok_or_else(|| UpstreamError::protocol("token answer is not a JSON object"))?;

    let token_type = match get_ci(&obj, "token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(_) => return Err(UpstreamError::protocol("token_type is not \"bearer\"")),
        None => return Err(UpstreamError::protocol("token answer has no token_type")),
    };
    let expires_in = match get_ci(&obj, "expires_in") {
        None => return Err(UpstreamError::protocol("token answer has no expires_in")),
        Some(v) => seconds(v).ok_or_else(|| UpstreamError::protocol("expires_in is not a number of seconds"))?,
    };
    if expires_in.is_zero() || expires_in > MAX_EXPIRES_IN {
        return Err(UpstreamError::protocol("expires_in is zero or longer than a day"));
    }
    let access_token = match take_ci(&mut obj, "access_token") {
        Some(Value::String(t)) if usable_token(&t) => AccessToken::new(t),
        Some(_) => return Err(UpstreamError::protocol("access_token is not a usable token")),
        None => return Err(UpstreamError::protocol("token answer has no access_token")),
    };
    Ok(TokenGrant { access_token, token_type, expires_in })
}

/// A token we can later put in an `Authorization` header: visible ASCII, bounded length.
fn usable_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_graphic())
}

/// Whole seconds from a JSON number (`1200`, `1200.0`) or numeric string (`"1200"`).
fn seconds(v: &Value) -> Option<Duration> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(Duration::from_secs(u))
            } else {
                let f = n.as_f64()?;
                (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64)
                    .then(|| Duration::from_secs(f as u64))
            }
        }
        Value::String(s) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
        _ => None,
    }
}

/// Parses `GET /v2/ClientIntegrationInformation`. Keys are matched ignoring case;
/// `ClientId` may be a number or a string; privileges that are not strings are skipped.
pub(crate) fn client_integration_info(body: &[u8]) -> Result<ClientIntegrationInfo, UpstreamError> {
    let obj = json_object(body)
        .ok_or_else(|| UpstreamError::protocol("ClientIntegrationInformation answer is not a JSON object"))?;
    let client_id = match get_ci(&obj, "ClientId") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let client_name = match get_ci(&obj, "ClientName") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    };
    Ok(ClientIntegrationInfo {
        client_id,
        client_name,
        valid_privileges: strings(get_ci(&obj, "ValidPrivileges")),
        invalid_privileges: strings(get_ci(&obj, "InvalidPrivileges")),
    })
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// The RFC 6749 §5.2 `error` code of an answer, sanitised; `None` if there is none.
pub(crate) fn oauth_error_code(body: &[u8]) -> Option<String> {
    let obj = json_object(body)?;
    let code = sanitize_error_code(get_ci(&obj, "error")?.as_str()?);
    (!code.is_empty()).then_some(code)
}

/// Keeps only `[A-Za-z0-9_]` and at most 64 characters: an error code is an identifier, and
/// anything else in that field is not something we want in logs or messages.
pub(crate) fn sanitize_error_code(raw: &str) -> String {
    raw.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(MAX_ERROR_CODE_LEN).collect()
}

/// Whether the answer is the API gateway's complaint about the subscription key
/// (`{"statusCode": 401, "message": "Access denied due to invalid subscription key. ..."}`).
pub(crate) fn mentions_subscription_key(body: &[u8]) -> bool {
    let Some(obj) = json_object(body) else {
        return false;
    };
    matches!(get_ci(&obj, "message"), Some(Value::String(m)) if m.to_ascii_lowercase().contains("subscription key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_but_prefers_exact() {
        let v: Value = serde_json::from_str(r#"{"clientid": 1, "ClientId": 2, "CLIENTNAME": "x"}"#).expect("json");
        let obj = v.as_object().expect("object");
        assert_eq!(get_ci(obj, "ClientId"), Some(&Value::from(2)));
        assert_eq!(get_ci(obj, "clientName"), Some(&Value::from("x")));
        assert_eq!(get_ci(obj, "missing"), None);
    }

    #[test]
    fn token_grant_accepts_go_shapes() {
        let g = token_grant(br#"{"access_token":"eyJ.a.b","token_type":"bearer","expires_in":1200}"#).expect("ok");
        assert_eq!(g.access_token.expose_secret(), "eyJ.a.b");
        assert_eq!(g.token_type, "Bearer");
        assert_eq!(g.expires_in, Duration::from_secs(1200));
        let g = token_grant(br#"{"Access_Token":"t","TOKEN_TYPE":"BEARER","expires_in":"600"}"#).expect("ok");
        assert_eq!(g.expires_in, Duration::from_secs(600));
        let g = token_grant(br#"{"access_token":"t","token_type":"Bearer","expires_in":600.0}"#).expect("ok");
        assert_eq!(g.expires_in, Duration::from_secs(600));
    }

    #[test]
    fn token_grant_rejects_bad_answers() {
        for bad in [
            &br#"{"access_token":"t","token_type":"bearer"}"#[..],
            br#"{"access_token":"t","token_type":"bearer","expires_in":0}"#,
            br#"{"access_token":"t","token_type":"bearer","expires_in":86401}"#,
            br#"{"access_token":"t","token_type":"bearer","expires_in":-5}"#,
            br#"{"access_token":"t","token_type":"bearer","expires_in":"soon"}"#,
            br#"{"access_token":"t","token_type":"mac","expires_in":60}"#,
            br#"{"token_type":"bearer","expires_in":60}"#,
            br#"{"access_token":"","token_type":"bearer","expires_in":60}"#,
            br#"{"access_token":"a b","token_type":"bearer","expires_in":60}"#,
            br#"{"access_token":7,"token_type":"bearer","expires_in":60}"#,
            b"[]",
            b"not json",
        ] {
            let err = token_grant(bad).expect_err("must be rejected");
            assert!(matches!(err, UpstreamError::Protocol { .. }), "{err:?}");
        }
    }

    #[test]
    fn token_grant_errors_do_not_quote_the_body() {
        let err = token_grant(br#"{"access_token":"SECRET-TOKEN","token_type":"mac","expires_in":60}"#)
            .expect_err("bad type");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
        let err = token_grant(br#"{"access_token":"SECRET-TOKEN" "#).expect_err("bad json");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }

    #[test]
    fn client_integration_info_any_casing() {
        let i = client_integration_info(
            br#"{"clientId": 4711, "clientName": "Acme AS", "validPrivileges": ["A", 3, "B"], "InvalidPrivileges": ["C"]}"#,
        )
        .expect("ok");
        assert_eq!(i.client_id.as_deref(), Some("4711"));
        assert_eq!(i.client_name.as_deref(), Some("Acme AS"));
        assert_eq!(i.valid_privileges, ["A", "B"]);
        assert_eq!(i.invalid_privileges, ["C"]);
        let i = client_integration_info(br#"{"ClientId": "9f1c", "ClientName": null}"#).expect("ok");
        assert_eq!(i.client_id.as_deref(), Some("9f1c"));
        assert_eq!(i.client_name, None);
        assert!(i.valid_privileges.is_empty());
        assert!(client_integration_info(b"null").is_err());
    }

    #[test]
    fn error_codes_are_sanitised() {
        assert_eq!(sanitize_error_code("invalid_client"), "invalid_client");
        assert_eq!(sanitize_error_code("invalid client\n<script>"), "invalidclientscript");
        assert_eq!(sanitize_error_code(&"a".repeat(100)).len(), 64);
        assert_eq!(
            oauth_error_code(br#"{"Error":"unsupported_grant_type"}"#).as_deref(),
            Some("unsupported_grant_type")
        );
        assert_eq!(oauth_error_code(br#"{"error":"--"}"#), None);
        assert_eq!(oauth_error_code(br#"{"error":5}"#), None);
        assert_eq!(oauth_error_code(b"<html>"), None);
    }

    #[test]
    fn gateway_messages_are_recognised() {
        assert!(mentions_subscription_key(
            br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."}"#
        ));
        assert!(!mentions_subscription_key(br#"{"statusCode": 401, "message": "Unauthorized."}"#));
        assert!(!mentions_subscription_key(b"subscription key"));
    }
}
