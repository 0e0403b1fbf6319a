//! Plain data the simulator's files share and hand to tests: a Go client the simulator
//! knows ([`SimClient`]) and a request as it arrived ([`RecordedRequest`]). A leaf: it
//! imports nothing of its siblings.
//!
//! Invariant: a recorded request holds credentials (in its headers), so its `Debug` prints
//! header names and the body's length only.

use std::collections::BTreeMap;
use std::fmt;

use axum::http::{HeaderMap, Method, Uri};

use crate::domain::Environment;

/// A Go client (customer) known to the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimClient {
    /// Go's client id; answered as a JSON number when it is numeric, else as a string.
    pub client_id: String,
    pub name: String,
    pub organization_number: String,
}

/// A request as the simulator received it, for byte-for-byte assertions.
#[derive(Clone)]
pub struct RecordedRequest {
    /// The environment its path selected.
    pub environment: Environment,
    pub method: String,
    /// The path exactly as sent (casing kept).
    pub path: String,
    pub query: Option<String>,
    /// Header names (lowercase) to values; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub(super) fn new(environment: Environment, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            map.entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        Self {
            environment,
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: map,
            body: body.to_vec(),
        }
    }

    /// A header's value by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: the values include the credentials.
        let names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        f.debug_struct("RecordedRequest")
            .field("environment", &self.environment)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}
