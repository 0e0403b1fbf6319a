//! Issue 13, fuzzing the parsers: every reader of Go's answers (token grant, OAuth errors,
//! gateway errors, ProblemDetails, onboarding Initiate and Finalize,
//! ClientIntegrationInformation, `Retry-After`) over 10,000 generated bodies each, mixing
//! Go's shapes with broken ones.
//!
//! Rules: no panic; an error's text is non-empty, never holds a planted secret (a token,
//! a client key, a value we sent), and repeats no more than 64 bytes of the body; what is
//! accepted is within the documented bounds.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use super::classify;
use super::error::{MAX_RETRY_AFTER, MIN_RETRY_AFTER, UpstreamError};
use super::parse;
use crate::fuzz_support::{body, config, echoes, guidish, json_any, member, object, rfc3339ish, text};

/// Secrets planted in generated answers; no error may carry them.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.U0lHTkFUVVJFLXNlY3JldA";
const CLIENT_KEY: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
/// A value we sent (an onboarding token), which Go might echo in a title.
const SENT: &str = "onb-TOKEN-4f1e2d3c";

fn planted() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::from(TOKEN)),
        Just(Value::from(CLIENT_KEY)),
        Just(Value::from(format!("invalid token {SENT} for key {CLIENT_KEY}"))),
        Just(Value::from(SENT.to_uppercase())),
    ]
    .boxed()
}

fn strs(items: &'static [&'static str]) -> BoxedStrategy<Value> {
    proptest::sample::select(items).prop_map(Value::from).boxed()
}

/// Checks an error's text: non-empty, no planted secret, at most 64 bytes of the body.
fn check_error(e: &UpstreamError, body: &[u8]) -> Result<(), TestCaseError> {
    let shown = format!("{e}");
    let debug = format!("{e:?}");
    prop_assert!(!shown.trim().is_empty(), "empty message");
    for secret in [TOKEN, CLIENT_KEY, SENT] {
        // Also with the punctuation gone, as an OAuth error code sanitised from it would be.
        let alnum = |s: &str| s.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
        for t in [&shown, &debug] {
            prop_assert!(!t.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()), "a planted secret in {}", t);
            prop_assert!(!alnum(t).contains(&alnum(secret)), "a planted secret, stripped, in {}", t);
        }
    }
    prop_assert!(!echoes(&shown, &String::from_utf8_lossy(body), 64), "repeats the body: {}", shown);
    if let UpstreamError::RateLimited { retry_after } | UpstreamError::QuotaExceeded { retry_after } = e {
        prop_assert!((MIN_RETRY_AFTER..=MAX_RETRY_AFTER).contains(retry_after));
    }
    Ok(())
}

/// Go's own answer, valid: about half of each body generator's shapes are these (then cut
/// or altered by [`body`] now and then), so the success paths are exercised as well.
fn go_token() -> BoxedStrategy<Value> {
    (prop_oneof![Just(TOKEN.to_owned()), "[!-~]{1,40}"], strs(&["Bearer", "bearer"]), 1u64..=86_400)
        .prop_map(|(t, ty, exp)| serde_json::json!({"access_token": t, "token_type": ty, "expires_in": exp}))
        .boxed()
}

fn go_initiate() -> BoxedStrategy<Value> {
    ("[a-z0-9]{1,20}", 1970i32..2100, 1u8..=12, 1u8..=28, 0u8..24, proptest::option::of("[0-9]{1,7}"))
        .prop_map(|(path, y, mo, d, h, frac)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            serde_json::json!({
                "TemporaryUrl": format!("https://go.poweroffice.net/onboarding/{path}"),
                "ValidUntilDateTimeOffset": format!("{y:04}-{mo:02}-{d:02}T{h:02}:00:00{frac}+02:00"),
            })
        })
        .boxed()
}

fn go_finalize() -> BoxedStrategy<Value> {
    let client = (proptest::array::uniform16(any::<u8>()), "[ -~]{0,30}", "[0-9]{9}").prop_map(|(b, name, org)| {
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let key = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
        serde_json::json!({"ClientKey": key, "ClientName": name, "ClientOrganizationNumber": org})
    });
    (proptest::collection::vec(client, 0..4), "[a-z]{1,8}@[a-z]{1,8}\\.no")
        .prop_map(|(cs, email)| serde_json::json!({"OnboardedClientsInformation": cs, "UserEmail": email}))
        .boxed()
}

fn token_body() -> BoxedStrategy<Vec<u8>> {
    body(prop_oneof![go_token(), token_shape()].boxed())
}

fn token_shape() -> BoxedStrategy<Value> {
    object(vec![
        member(
            "access_token",
            prop_oneof![planted(), "[!-~]{1,40}".prop_map(Value::from), strs(&["", "a b", "t"])].boxed(),
        ),
        member("token_type", strs(&["bearer", "Bearer", "BEARER", "mac", ""])),
        member(
            "expires_in",
            prop_oneof![
                (0i64..200_000).prop_map(Value::from),
                strs(&["600", " 1200 ", "soon", "-5", "1e3"]),
                Just(Value::from(1200.0)),
                Just(Value::from(600.5)),
                any::<i64>().prop_map(Value::from),
            ]
            .boxed(),
        ),
    ])
}

fn error_body() -> BoxedStrategy<Vec<u8>> {
    let oauth = object(vec![
        member(
            "error",
            prop_oneof![
                strs(&["invalid_client", "invalid_request", "--", ""]),
                planted(),
                "[ -~]{0,80}".prop_map(Value::from)
            ]
            .boxed(),
        ),
        member("error_description", prop_oneof![planted(), "[ -~]{0,80}".prop_map(Value::from)].boxed()),
    ]);
    let gateway = object(vec![
        member(
            "statusCode",
            prop_oneof![strs(&["401", "403", "429", " 429 ", "x"]), (400i64..500).prop_map(Value::from)].boxed(),
        ),
        member(
            "message",
            prop_oneof![
                strs(&[
                    "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription.",
                    "Rate limit is exceeded. Try again in 7 seconds.",
                    "Try again in 99999999999999 seconds",
                    "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.",
                    "Out of call volume quota. Quota will be replenished in 00:00:59.",
                    "Quota will be replenished in 99999999999999999:99:99",
                    "Unauthorized."
                ]),
                planted(),
            ]
            .boxed(),
        ),
    ]);
    let problem = object(vec![
        member("type", "[ -~]{0,40}".prop_map(Value::from).boxed()),
        member(
            "title",
            prop_oneof![planted(), "[ -~]{0,200}".prop_map(Value::from), ".{0,60}".prop_map(Value::from)].boxed(),
        ),
        member("status", (100i64..600).prop_map(Value::from).boxed()),
        member("detail", planted()),
        member(
            "traceId",
            prop_oneof![
                planted(),
                strs(&["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "0HMVD5NQ3LJ0K:00000001"]),
                "[0-9a-f-]{0,60}".prop_map(Value::from),
            ]
            .boxed(),
        ),
        member(
            "errors",
            prop_oneof![
                planted().prop_map(|k| serde_json::json!({ k.as_str().unwrap_or("k"): ["The field is required."] })),
                "[ -~]{0,30}".prop_map(|k| serde_json::json!({ k.clone(): [k] })),
                json_any(),
            ]
            .boxed(),
        ),
    ]);
    prop_oneof![body(oauth), body(gateway), body(problem)].boxed()
}

fn headers() -> BoxedStrategy<HeaderMap> {
    let value = prop_oneof![
        Just("2".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
        Just("Wed, 21 Oct 2099 07:28:00 GMT".to_owned()),
        "[0-9]{0,25}",
        text(),
    ];
    proptest::option::of(value)
        .prop_map(|v| {
            let mut h = HeaderMap::new();
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(RETRY_AFTER, v);
            }
            h
        })
        .boxed()
}

fn status() -> BoxedStrategy<StatusCode> {
    prop_oneof![proptest::sample::select(vec![301u16, 400, 401, 403, 404, 408, 429, 500, 502, 503]), 100u16..1000,]
        .prop_map(|n| StatusCode::from_u16(n).unwrap_or(StatusCode::IM_A_TEAPOT))
        .boxed()
}

fn onboarding_body() -> BoxedStrategy<Vec<u8>> {
    body(prop_oneof![go_initiate(), initiate_shape()].boxed())
}

fn initiate_shape() -> BoxedStrategy<Value> {
    object(vec![
        member(
            "TemporaryUrl",
            prop_oneof![
                strs(&[
                    "https://go.poweroffice.net/onboarding/abc",
                    "http://127.0.0.1:9/x",
                    "javascript:alert(1)",
                    "/rel"
                ]),
                Just(Value::from(format!("https://u:{TOKEN}@x/"))),
                "https?://[a-z.:@/?=%]{0,60}".prop_map(Value::from),
            ]
            .boxed(),
        ),
        member("ValidUntilDateTimeOffset", prop_oneof![rfc3339ish().prop_map(Value::from), json_any()].boxed()),
    ])
}

fn client_entry() -> BoxedStrategy<Value> {
    object(vec![
        member(
            "ClientKey",
            prop_oneof![guidish().prop_map(Value::from), Just(Value::from(CLIENT_KEY)), planted()].boxed(),
        ),
        member("ClientName", "[ -~]{0,40}".prop_map(Value::from).boxed()),
        member(
            "ClientOrganizationNumber",
            prop_oneof!["[0-9]{9}".prop_map(Value::from), (0i64..1_000_000_000).prop_map(Value::from)].boxed(),
        ),
    ])
}

fn finalize_body() -> BoxedStrategy<Vec<u8>> {
    body(prop_oneof![go_finalize(), finalize_shape()].boxed())
}

fn finalize_shape() -> BoxedStrategy<Value> {
    object(vec![
        member(
            "OnboardedClientsInformation",
            prop_oneof![proptest::collection::vec(client_entry(), 0..4).prop_map(Value::Array), json_any()].boxed(),
        ),
        member("UserEmail", "[a-z@.]{0,30}".prop_map(Value::from).boxed()),
    ])
}

fn info_body() -> BoxedStrategy<Vec<u8>> {
    let privileges = proptest::collection::vec(prop_oneof!["[A-Za-z]{1,12}".prop_map(Value::from), json_any()], 0..4)
        .prop_map(Value::Array)
        .boxed();
    body(object(vec![
        member(
            "ClientId",
            prop_oneof![any::<i64>().prop_map(Value::from), "[0-9a-f]{0,12}".prop_map(Value::from)].boxed(),
        ),
        member("ClientName", prop_oneof!["[ -~]{0,40}".prop_map(Value::from), Just(Value::Null)].boxed()),
        member("ValidPrivileges", privileges.clone()),
        member("InvalidPrivileges", privileges),
    ]))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_answer(b in token_body()) {
        match parse::token_grant(&b) {
            Ok(g) => {
                prop_assert!(!g.expires_in.is_zero() && g.expires_in <= parse::MAX_EXPIRES_IN);
                prop_assert_eq!(g.token_type.as_str(), "Bearer");
                let t = g.access_token.expose_secret();
                prop_assert!(!t.is_empty() && t.bytes().all(|c| c.is_ascii_graphic()));
                prop_assert!(!format!("{g:?}").contains(TOKEN), "Debug shows the token");
            }
            Err(e) => {
                prop_assert!(matches!(e, UpstreamError::Protocol { .. }), "{:?}", e);
                check_error(&e, &b)?;
            }
        }
    }

    #[test]
    fn token_failure(s in status(), h in headers(), b in prop_oneof![error_body(), token_body()]) {
        check_error(&classify::classify_token_failure(s, &h, &b, &[]), &b)?;
        check_error(&classify::classify_api_failure(s, &h, &b, &[]), &b)?;
    }

    #[test]
    fn onboarding_failure(s in status(), h in headers(), b in error_body()) {
        let e = classify::classify_onboarding_failure(s, &h, &b, &[SENT, CLIENT_KEY, TOKEN]);
        check_error(&e, &b)?;
        if let UpstreamError::OnboardingRejected { title, .. } = &e {
            prop_assert!(!title.is_empty() && title.len() <= 120, "{:?}", title);
            prop_assert!(title.bytes().all(|c| c.is_ascii_graphic() || c == b' '), "{:?}", title);
        }
    }

    #[test]
    fn oauth_error_code_and_gateway_message(b in error_body()) {
        if let Some(code) = parse::oauth_error_code(&b) {
            prop_assert!(!code.is_empty() && code.len() <= 64);
            prop_assert!(code.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{:?}", code);
        }
        let _ = parse::subscription_key_problem(&b);
        let _ = classify::parse_try_again_message(&b);
        let _ = classify::parse_replenished_message(&b);
        let _ = parse::gateway_message(&b);
        if let Some(t) = parse::trace_id(&b, &[SENT]) {
            let t = t.as_str().to_ascii_lowercase();
            prop_assert!(!t.contains(&CLIENT_KEY.to_ascii_lowercase()) && !t.contains(&SENT.to_ascii_lowercase()), "{}", t);
        }
    }

    #[test]
    fn problem_title(b in error_body(), sent in prop_oneof![Just(SENT.to_owned()), "[ -~]{0,30}".boxed()]) {
        if let Some(raw) = parse::problem_title(&b) {
            let t = parse::sanitize_title(&raw, &[&sent, CLIENT_KEY]);
            prop_assert!(t.len() <= 120 && t.bytes().all(|c| c.is_ascii_graphic() || c == b' '), "{:?}", t);
            let s = sent.trim();
            if s.len() >= 6 && s.is_ascii() && !"[redacted]".to_ascii_lowercase().contains(&s.to_ascii_lowercase()) {
                prop_assert!(!t.to_ascii_lowercase().contains(&s.to_ascii_lowercase()), "{:?} in {:?}", s, t);
            }
            prop_assert!(!t.contains(CLIENT_KEY) && !t.contains(TOKEN), "{:?}", t);
        }
    }

    #[test]
    fn retry_after(h in headers(), b in error_body(), offset in 0u64..4_000_000_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(offset);
        let wait = classify::retry_after(&h, &b, now);
        prop_assert!((MIN_RETRY_AFTER..=MAX_RETRY_AFTER).contains(&wait));
        if let Some(v) = h.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) {
            let _ = classify::parse_retry_after_value(v, now);
        }
    }

    #[test]
    fn onboarding_initiate_answer(b in onboarding_body()) {
        match parse::onboarding_session(&b) {
            Ok(s) => {
                let u = url::Url::parse(&s.temporary_url).expect("accepted URLs parse");
                prop_assert!(matches!(u.scheme(), "http" | "https") && u.password().is_none());
            }
            Err(e) => check_error(&e, &b)?,
        }
    }

    #[test]
    fn onboarding_finalize_answer(b in finalize_body()) {
        match parse::onboarding_result(&b) {
            Ok(r) => {
                for c in &r.clients {
                    prop_assert!(crate::crypto::ClientKey::parse(c.client_key.expose_secret()).is_ok());
                }
                prop_assert!(!format!("{r:?}").contains(CLIENT_KEY), "Debug shows a client key");
            }
            Err(e) => check_error(&e, &b)?,
        }
    }

    #[test]
    fn client_integration_information_answer(b in info_body()) {
        match parse::client_integration_info(&b) {
            Ok(i) => prop_assert!(i.client_id.as_deref().is_none_or(|c| !c.trim().is_empty())),
            Err(e) => check_error(&e, &b)?,
        }
    }
}
