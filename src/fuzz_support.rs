//! Test-only support for the parser property tests (issue 13, "fuzzing the parsers"):
//! input generators that mix valid and invalid shapes, and the checks every parser's errors
//! must pass. Compiled into the library's unit tests (`#[cfg(test)]`) and, by path, into
//! `tests/hardening_fuzz.rs`, so both sides use the same rules. Uses only `proptest` and
//! `serde_json`.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// Cases per property: the issue asks for at least 10,000.
pub const CASES: u32 = 10_000;

/// The longest run of a rejected input an error message may repeat. Errors go to callers,
/// logs and audit records; a value longer than this may be a secret pasted into the wrong
/// field (a client key is 36 characters), so it is described, never repeated.
pub const MAX_ECHO: usize = 24;

/// Proptest settings for a fuzz property: [`CASES`] cases, no regression files written.
pub fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

/// Whether `msg` repeats more than `max` consecutive bytes of `input`, raw or as `{:?}`
/// would quote it.
pub fn echoes(msg: &str, input: &str, max: usize) -> bool {
    let n = max + 1;
    if msg.len() < n || input.len() < n {
        return false;
    }
    // Every run of `n` bytes of the message, then one look-up per run of the input: linear,
    // so 10,000 cases stay fast in an unoptimised test build.
    let runs: std::collections::HashSet<&[u8]> = msg.as_bytes().windows(n).collect();
    let debug = format!("{input:?}");
    let quoted = debug.get(1..debug.len().saturating_sub(1)).unwrap_or("");
    [input.as_bytes(), quoted.as_bytes()].iter().any(|bytes| bytes.windows(n).any(|w| runs.contains(w)))
}

/// The rules for an error from parsing `input` into the field `expected_field`: the field
/// is named and the message repeats no more than [`MAX_ECHO`] bytes of the input.
pub fn check_named(msg: &str, field: &str, expected_field: &str, input: &str) -> Result<(), TestCaseError> {
    prop_assert!(!field.is_empty(), "no field: {msg}");
    prop_assert_eq!(field, expected_field, "{}", msg);
    prop_assert!(msg.contains(field), "message does not name the field: {}", msg);
    prop_assert!(!echoes(msg, input, MAX_ECHO), "message repeats the input: {}", msg);
    Ok(())
}

/// Text from outside: any Unicode, printable ASCII, near-valid identifier-ish text, and
/// invalid UTF-8 made lossy. Up to about 200 bytes.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        ".{0,60}",
        "[ -~]{0,200}",
        "[a-z0-9._/=*: -]{0,70}",
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
    .boxed()
}

/// A JSON leaf of any type, strings often long enough to trip an echo check.
pub fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        "[ -~]{0,80}".prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, nested at most three deep.
pub fn json_any() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-zA-Z_]{0,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// One member of a JSON object: absent sometimes; its key in the given, lower or upper
/// case; its value usually from `good`, else any JSON.
pub fn member(name: &'static str, good: BoxedStrategy<Value>) -> BoxedStrategy<Option<(String, Value)>> {
    let key = prop_oneof![Just(name.to_owned()), Just(name.to_ascii_lowercase()), Just(name.to_ascii_uppercase())];
    let value = prop_oneof![3 => good, 1 => json_any()];
    proptest::option::weighted(0.85, (key, value)).boxed()
}

/// An object of `members`, plus up to two unknown ones.
pub fn object(members: Vec<BoxedStrategy<Option<(String, Value)>>>) -> BoxedStrategy<Value> {
    (members, proptest::collection::vec(("[a-zA-Z]{1,8}", json_leaf()), 0..2))
        .prop_map(|(ms, extra)| {
            let mut m = Map::new();
            for (k, v) in ms.into_iter().flatten().chain(extra) {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

/// Bytes of a body shaped like `shape`: mostly its JSON, sometimes cut short or with a
/// byte changed, sometimes any JSON or any bytes at all.
pub fn body(shape: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    let json = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    prop_oneof![
        6 => shape.clone().prop_map(json),
        2 => (shape, any::<Index>(), any::<u8>(), any::<bool>()).prop_map(move |(v, at, byte, cut)| {
            let mut b = json(v);
            if !b.is_empty() {
                let i = at.index(b.len());
                if cut { b.truncate(i) } else { b[i] = byte }
            }
            b
        }),
        1 => json_any().prop_map(json),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ]
    .boxed()
}

/// A GUID-shaped string, sometimes with white space around it or one character off.
pub fn guidish() -> BoxedStrategy<String> {
    (proptest::array::uniform16(any::<u8>()), any::<bool>(), 0usize..40, any::<char>())
        .prop_map(|(b, pad, at, c)| {
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let mut g = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            if at < g.len() && g.is_char_boundary(at) && at % 3 == 0 {
                g.replace_range(at..=at, &c.to_string());
            }
            if pad { format!("  {g}\n") } else { g }
        })
        .boxed()
}

/// RFC 3339 times, good and nearly good (.NET's seven fractional digits, offsets, junk).
pub fn rfc3339ish() -> BoxedStrategy<String> {
    (
        0i64..10_000,
        1u8..14,
        0u8..33,
        0u8..25,
        0u8..61,
        0u8..62,
        proptest::option::of("[0-9]{1,9}"),
        prop_oneof![
            Just("Z".to_owned()),
            Just("+02:00".to_owned()),
            Just("-23:59".to_owned()),
            "[+-][0-9]{2}:[0-9]{2}"
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
        .boxed()
}
