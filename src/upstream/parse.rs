//! Reading Go's JSON answers: key lookup that ignores case (Go's casing varies), the token
//! grant, ClientIntegrationInformation, the onboarding answers, and the error shapes of the
//! gateway, the OAuth server and ProblemDetails.
//!
//! Invariant: no function here returns or formats text from the body except the fields it
//! is asked for; `serde_json`'s own error messages (which can quote the input) are dropped.
//! The one free-text field kept from an error answer (a ProblemDetails `title`) goes
//! through [`sanitize_title`].

use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::answers::{ClientIntegrationInfo, OnboardedClient, OnboardingResult, OnboardingSession, TokenGrant};
use super::error::{SubscriptionKeyProblem, TraceId, UpstreamError};
use crate::crypto::{AccessToken, ClientKey};

/// Longest accepted `expires_in`: a token that claims to live more than a day is not one
/// Go issued (it issues 10 to 20 minutes), and caching it that long would be unsafe.
pub(crate) const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted access token. Go's JWTs are around 1-2 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest Go ClientId we keep (Go's are numbers or short ids).
const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest OAuth error code we keep.
const MAX_ERROR_CODE_LEN: usize = 64;
/// Longest ProblemDetails title we keep.
const MAX_TITLE_LEN: usize = 120;
/// Request values shorter than this are not searched for in a title: replacing every "1"
/// would garble the text, and no secret is that short.
const MIN_REDACTED_VALUE_LEN: usize = 6;
/// Stands in for anything cut out of a title.
const REDACTED: &str = "[redacted]";
/// Longest `TemporaryUrl` we accept (browsers handle far more, Go's are short).
const MAX_TEMPORARY_URL_LEN: usize = 4096;

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
    // Stored, shown by `tenant show` and quoted in audit records: an id, not free text.
    let client_id = match get_ci(&obj, "ClientId") {
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
    .filter(|id| !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()));
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

/// Parses a 200 from `Onboarding/Initiate`: `TemporaryUrl` (an absolute http(s) URL, since
/// a user's browser is sent there) and `ValidUntilDateTimeOffset` (RFC 3339; .NET writes
/// seven fractional digits and a numeric offset).
pub(crate) fn onboarding_session(body: &[u8]) -> Result<OnboardingSession, UpstreamError> {
    let obj =
        json_object(body).ok_or_else(|| UpstreamError::protocol("Onboarding/Initiate answer is not a JSON object"))?;
    let temporary_url = match get_ci(&obj, "TemporaryUrl") {
        Some(Value::String(u)) if browser_url(u.trim()) => u.trim().to_owned(),
        Some(_) => return Err(UpstreamError::protocol("TemporaryUrl is not an absolute http(s) URL")),
        None => return Err(UpstreamError::protocol("Onboarding/Initiate answer has no TemporaryUrl")),
    };
    let valid_until_ms = match get_ci(&obj, "ValidUntilDateTimeOffset") {
        Some(Value::String(t)) => unix_ms(t.trim())
            .ok_or_else(|| UpstreamError::protocol("ValidUntilDateTimeOffset is not an RFC 3339 time"))?,
        Some(_) => return Err(UpstreamError::protocol("ValidUntilDateTimeOffset is not an RFC 3339 time")),
        None => return Err(UpstreamError::protocol("Onboarding/Initiate answer has no ValidUntilDateTimeOffset")),
    };
    Ok(OnboardingSession { temporary_url, valid_until_ms })
}

/// An absolute http(s) URL with a host and no credentials, of bounded length.
fn browser_url(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_TEMPORARY_URL_LEN {
        return false;
    }
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.username().is_empty()
            && u.password().is_none()
    })
}

/// Milliseconds since the Unix epoch of an RFC 3339 time.
fn unix_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parses a 200 from `Onboarding/Finalize`: one entry per activated client in
/// `OnboardedClientsInformation` (a malformed `ClientKey` fails the whole answer, since
/// storing half of an onboarding would be worse than none), and `UserEmail`. An empty list
/// is returned as such; the caller decides what it means.
pub(crate) fn onboarding_result(body: &[u8]) -> Result<OnboardingResult, UpstreamError> {
    let mut obj =
        json_object(body).ok_or_else(|| UpstreamError::protocol("Onboarding/Finalize answer is not a JSON object"))?;
    let items = match take_ci(&mut obj, "OnboardedClientsInformation") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(UpstreamError::protocol("OnboardedClientsInformation is not a list")),
        None => return Err(UpstreamError::protocol("Onboarding/Finalize answer has no OnboardedClientsInformation")),
    };
    let mut clients = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(mut entry) = item else {
            return Err(UpstreamError::protocol("an OnboardedClientsInformation entry is not an object"));
        };
        let client_key = match take_ci(&mut entry, "ClientKey") {
            Some(Value::String(k)) => {
                // Moved out of the JSON tree, so this is the only copy besides the key's own.
                let k = Zeroizing::new(k);
                ClientKey::parse(&k)
                    .map_err(|_| UpstreamError::protocol("a ClientKey in the Finalize answer is not a GUID"))?
            }
            Some(_) => return Err(UpstreamError::protocol("a ClientKey in the Finalize answer is not a GUID")),
            None => return Err(UpstreamError::protocol("an onboarded client has no ClientKey")),
        };
        clients.push(OnboardedClient {
            client_key,
            client_name: text(get_ci(&entry, "ClientName")),
            organization_number: text(get_ci(&entry, "ClientOrganizationNumber")),
        });
    }
    Ok(OnboardingResult { clients, user_email: text(get_ci(&obj, "UserEmail")) })
}

/// A trimmed, non-empty string, or a number written as text.
fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Most field names of a ProblemDetails `errors` map named in a title.
const MAX_PROBLEM_FIELDS: usize = 4;

/// The `title` of a ProblemDetails answer (any casing), unsanitised, followed by the names
/// of the fields in its `errors` map (ASP.NET's validation answer: `{"errors":
/// {"ClientOrganizationNo": ["The ClientOrganizationNo field is required."]}}`), so "One or
/// more validation errors occurred" says which. The messages are left out: they may quote
/// what we sent.
pub(crate) fn problem_title(body: &[u8]) -> Option<String> {
    let obj = json_object(body)?;
    let title = get_ci(&obj, "title")?.as_str()?.to_owned();
    let fields: Vec<String> = match get_ci(&obj, "errors") {
        // Field names are identifiers (`ClientOrganizationNo`, `$.RedirectUri`); anything
        // else, or anything that looks like a key, is left out rather than cleaned up.
        Some(Value::Object(errors)) => errors
            .keys()
            .filter(|k| {
                !k.is_empty()
                    && k.len() <= 40
                    && !looks_secret(k)
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '[' | ']'))
            })
            .take(MAX_PROBLEM_FIELDS)
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    if fields.is_empty() { Some(title) } else { Some(format!("{title} (fields: {})", fields.join(", "))) }
}

/// The `traceId` of a ProblemDetails answer (any casing), if it has one of Go's shapes and
/// contains nothing we sent ([`TraceId::parse`]).
pub(crate) fn trace_id(body: &[u8], sent: &[&str]) -> Option<TraceId> {
    let obj = json_object(body)?;
    TraceId::parse(get_ci(&obj, "traceId")?.as_str()?, sent)
}

/// The API gateway's error shape, `{"statusCode": 401, "message": "..."}`: its message.
/// `statusCode` may be a number or a string (PowerOffice's spec writes `"429"`, the
/// gateway's default a number) and is not needed: the HTTP status says the same.
pub(crate) fn gateway_message(body: &[u8]) -> Option<String> {
    let obj = json_object(body)?;
    let status_code = match get_ci(&obj, "statusCode") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    status_code?;
    Some(get_ci(&obj, "message")?.as_str()?.to_owned())
}

/// Makes a ProblemDetails title safe to show and log. Go might echo what we sent, so:
/// non-printable and non-ASCII characters are replaced; every `request_values` entry (any
/// ASCII case) becomes `[redacted]`; so does every word that looks like a key, token or
/// URL (16+ characters with a digit, more than 40 characters, or containing `://`), which
/// catches echoes we did not foresee; at most 120 characters remain.
pub(crate) fn sanitize_title(raw: &str, request_values: &[&str]) -> String {
    let mut t: String = raw
        .chars()
        .map(|c| match c {
            c if c.is_ascii_graphic() => c,
            c if c.is_whitespace() || c.is_control() => ' ',
            _ => '?',
        })
        .collect();
    for value in request_values.iter().map(|v| v.trim()) {
        if value.len() >= MIN_REDACTED_VALUE_LEN && value.is_ascii() {
            t = replace_ignoring_ascii_case(&t, value, REDACTED);
        }
    }
    let words: Vec<&str> = t.split_whitespace().map(|w| if looks_secret(w) { REDACTED } else { w }).collect();
    let mut out = words.join(" ");
    // ASCII only, so any byte index is a character boundary.
    out.truncate(MAX_TITLE_LEN);
    out.trim_end().to_owned()
}

fn looks_secret(word: &str) -> bool {
    word != REDACTED
        && (word.len() > 40 || (word.len() >= 16 && word.bytes().any(|b| b.is_ascii_digit())) || word.contains("://"))
}

/// Replaces every occurrence of `needle` in `hay`, ignoring ASCII case. Both are ASCII, so
/// byte positions in the lowercased copy are positions in the original.
fn replace_ignoring_ascii_case(hay: &str, needle: &str, with: &str) -> String {
    let lower_hay = hay.to_ascii_lowercase();
    let lower_needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(hay.len());
    let mut i = 0;
    while let Some(pos) = lower_hay[i..].find(&lower_needle) {
        out.push_str(&hay[i..i + pos]);
        out.push_str(with);
        i += pos + needle.len();
    }
    out.push_str(&hay[i..]);
    out
}

/// Stands in for an `error` field that does not look like an OAuth error code.
pub(crate) const UNRECOGNISED_ERROR_CODE: &str = "unrecognised";

/// The RFC 6749 §5.2 `error` code of an answer, sanitised; `None` if there is none. A value
/// that looks like a key or token rather than a code (see [`looks_secret`]: RFC 6749's
/// codes are short words without digits) becomes [`UNRECOGNISED_ERROR_CODE`], because the
/// code is shown in errors and logs and sanitising only strips punctuation.
pub(crate) fn oauth_error_code(body: &[u8]) -> Option<String> {
    let obj = json_object(body)?;
    let code = sanitize_error_code(get_ci(&obj, "error")?.as_str()?);
    if looks_secret(&code) {
        return Some(UNRECOGNISED_ERROR_CODE.to_owned());
    }
    (!code.is_empty()).then_some(code)
}

/// Keeps only `[A-Za-z0-9_]` and at most 64 characters: an error code is an identifier, and
/// anything else in that field is not something we want in logs or messages.
pub(crate) fn sanitize_error_code(raw: &str) -> String {
    raw.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(MAX_ERROR_CODE_LEN).collect()
}

/// Whether, and how, the answer is the API gateway's complaint about the subscription key:
/// `{"statusCode": 401, "message": "Access denied due to missing subscription key. ..."}`
/// or `"... invalid subscription key. ..."` (go-api.md, "Token").
pub(crate) fn subscription_key_problem(body: &[u8]) -> Option<SubscriptionKeyProblem> {
    // Only the gateway's `{statusCode, message}` shape speaks for the gateway.
    let m = gateway_message(body)?.to_ascii_lowercase();
    if m.contains("missing subscription key") {
        Some(SubscriptionKeyProblem::Missing)
    } else if m.contains("invalid subscription key") {
        Some(SubscriptionKeyProblem::Invalid)
    } else if m.contains("subscription key") {
        Some(SubscriptionKeyProblem::Unspecified)
    } else {
        None
    }
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
        for odd in [r#""a\nb""#, r#""\u001b[31mred""#, r#""""#, &format!("\"{}\"", "9".repeat(65))] {
            let body = format!(r#"{{"ClientId": {odd}}}"#);
            assert_eq!(client_integration_info(body.as_bytes()).expect("ok").client_id, None, "{odd}");
        }
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
        // A token or key in the error field is not repeated, even without its punctuation.
        let echoed = br#"{"error":"eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.U0lH"}"#;
        assert_eq!(oauth_error_code(echoed).as_deref(), Some(UNRECOGNISED_ERROR_CODE));
        let key = br#"{"error":"c0ffee00-1234-4abc-8def-0123456789ab"}"#;
        assert_eq!(oauth_error_code(key).as_deref(), Some(UNRECOGNISED_ERROR_CODE));
        assert_eq!(
            oauth_error_code(br#"{"error":"unsupported_grant_type"}"#).as_deref(),
            Some("unsupported_grant_type")
        );
        assert_eq!(oauth_error_code(br#"{"error":5}"#), None);
        assert_eq!(oauth_error_code(b"<html>"), None);
    }

    #[test]
    fn onboarding_session_reads_dotnet_times_and_checks_the_url() {
        let s = onboarding_session(
            br#"{"TemporaryUrl":"https://go.poweroffice.net/onboarding/abc","ValidUntilDateTimeOffset":"2024-05-01T12:00:00.1234567+02:00"}"#,
        )
        .expect("ok");
        assert_eq!(s.temporary_url, "https://go.poweroffice.net/onboarding/abc");
        // 10:00:00.123 UTC on 2024-05-01.
        assert_eq!(s.valid_until_ms, 1_714_557_600_123);
        let s = onboarding_session(
            br#"{"temporaryUrl":"http://127.0.0.1:9/x","validUntilDateTimeOffset":"1970-01-01T00:00:01Z"}"#,
        )
        .expect("any casing");
        assert_eq!(s.valid_until_ms, 1000);
        for bad in [
            &br#"{"TemporaryUrl":"javascript:alert(1)","ValidUntilDateTimeOffset":"2024-05-01T12:00:00Z"}"#[..],
            br#"{"TemporaryUrl":"/relative","ValidUntilDateTimeOffset":"2024-05-01T12:00:00Z"}"#,
            br#"{"TemporaryUrl":"https://u:p@x/","ValidUntilDateTimeOffset":"2024-05-01T12:00:00Z"}"#,
            br#"{"TemporaryUrl":"https://x/","ValidUntilDateTimeOffset":"tomorrow"}"#,
            br#"{"TemporaryUrl":"https://x/","ValidUntilDateTimeOffset":1714557600}"#,
            br#"{"TemporaryUrl":"https://x/"}"#,
            br#"{"ValidUntilDateTimeOffset":"2024-05-01T12:00:00Z"}"#,
            b"[]",
        ] {
            assert!(matches!(onboarding_session(bad), Err(UpstreamError::Protocol { .. })));
        }
    }

    #[test]
    fn onboarding_result_parses_clients_and_refuses_bad_keys() {
        let key = "123e4567-e89b-12d3-a456-426614173f9a";
        let body = format!(
            r#"{{"onboardedClientsInformation":[{{"clientKey":"{key}","clientName":" Acme AS ","clientOrganizationNumber":"987654321"}},{{"ClientKey":" {key} ","ClientOrganizationNumber":123456789}}],"userEmail":"a@b.no"}}"#
        );
        let r = onboarding_result(body.as_bytes()).expect("ok");
        assert_eq!(r.clients.len(), 2);
        assert_eq!(r.clients[0].client_key.expose_secret(), key);
        assert_eq!(r.clients[0].client_name.as_deref(), Some("Acme AS"));
        assert_eq!(r.clients[0].organization_number.as_deref(), Some("987654321"));
        assert_eq!(r.clients[1].client_key.expose_secret(), key);
        assert_eq!(r.clients[1].client_name, None);
        assert_eq!(r.clients[1].organization_number.as_deref(), Some("123456789"));
        assert_eq!(r.user_email.as_deref(), Some("a@b.no"));
        assert!(!format!("{r:?}").contains(key), "Debug shows a client key");

        let empty = onboarding_result(br#"{"OnboardedClientsInformation":[]}"#).expect("ok");
        assert!(empty.clients.is_empty());
        assert_eq!(empty.user_email, None);

        let not_a_guid = "SECRET-NOT-A-GUID-0000000000000000000";
        for bad in [
            format!(r#"{{"OnboardedClientsInformation":[{{"ClientKey":"{not_a_guid}"}}]}}"#),
            r#"{"OnboardedClientsInformation":[{"ClientKey":7}]}"#.to_owned(),
            r#"{"OnboardedClientsInformation":[{"ClientName":"x"}]}"#.to_owned(),
            r#"{"OnboardedClientsInformation":["x"]}"#.to_owned(),
            r#"{"OnboardedClientsInformation":{}}"#.to_owned(),
            r#"{"UserEmail":"a@b.no"}"#.to_owned(),
            "null".to_owned(),
        ] {
            let err = onboarding_result(bad.as_bytes()).expect_err("must be rejected");
            assert!(matches!(err, UpstreamError::Protocol { .. }), "{err:?}");
            assert!(!format!("{err} {err:?}").contains("SECRET"));
        }
    }

    #[test]
    fn titles_are_sanitised() {
        assert_eq!(sanitize_title("Invalid onboarding token", &[]), "Invalid onboarding token");
        assert_eq!(sanitize_title("  Ugyldig\nforespørsel\u{0}  ", &[]), "Ugyldig foresp?rsel");
        assert_eq!(sanitize_title(&"x ".repeat(200), &[]).len(), 119);
        assert!(sanitize_title(&"y".repeat(500), &[]).len() <= 120);
        // Values we sent, any case, and things that look like keys, tokens or URLs.
        assert_eq!(sanitize_title("Key ABCDEF-123 refused", &["abcdef-123"]), "Key [redacted] refused");
        assert_eq!(sanitize_title("Key 0d9e5c1f4b2a4e6f8a7b3c2d1e0f9a8b refused", &[]), "Key [redacted] refused");
        assert_eq!(sanitize_title("See https://x/y", &[]), "See [redacted]");
        assert_eq!(sanitize_title("Org 123 bad", &["123"]), "Org 123 bad", "short values are left alone");
        assert_eq!(sanitize_title("", &[]), "");
    }

    #[test]
    fn gateway_messages_are_recognised() {
        assert_eq!(
            subscription_key_problem(
                br#"{"statusCode": 401, "message": "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."}"#
            ),
            Some(SubscriptionKeyProblem::Invalid)
        );
        assert_eq!(
            subscription_key_problem(
                br#"{"statusCode": "401", "message": "Access denied due to missing subscription key."}"#
            ),
            Some(SubscriptionKeyProblem::Missing)
        );
        assert_eq!(subscription_key_problem(br#"{"statusCode": 401, "message": "Unauthorized."}"#), None);
        assert_eq!(subscription_key_problem(b"subscription key"), None);
        assert_eq!(
            subscription_key_problem(br#"{"message": "invalid subscription key"}"#),
            None,
            "not the gateway's shape"
        );
        assert_eq!(gateway_message(br#"{"statusCode": "429", "message": "m"}"#).as_deref(), Some("m"));
        assert_eq!(gateway_message(br#"{"statusCode": 429, "message": "m"}"#).as_deref(), Some("m"));
        assert_eq!(gateway_message(br#"{"message": "m"}"#), None);
    }
}
