//! A caller's side of the wire: an mTLS gRPC channel to a running vault, for the CLI
//! (`token`, `dev`, `audit`, `status`) and the tests.

use tonic::transport::{Channel, Endpoint};

use crate::tls::{ClientTlsFiles, TlsError, tonic_client_tls};

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
}

/// Connects to `endpoint` (`https://host:port`) presenting the client certificate. The
/// server certificate is checked for `server_name`, by default the endpoint's host.
pub async fn connect(
    endpoint: &str,
    files: &ClientTlsFiles,
    server_name: Option<&str>,
) -> Result<Channel, ClientError> {
    let bad = |reason: String| ClientError::Endpoint { endpoint: endpoint.to_owned(), reason };
    let uri: http::Uri = endpoint.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("use https://host:port (the vault only speaks mutual TLS)".into()));
    }
    let host = uri.host().ok_or_else(|| bad("no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls = tonic_client_tls(files, server_name.unwrap_or(host))?;
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    ep.connect().await.map_err(|e| ClientError::Connect { endpoint: endpoint.to_owned(), reason: error_chain(&e) })
}

/// An error and its sources on one line (transport errors hide the useful part below).
/// A source whose text the line already holds is left out: several layers print their
/// source themselves, which once gave "tcp connect error: tcp connect error: ...".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chain_names_each_reason_once() {
        let refused = E("Connection refused (os error 111)", None);
        let e = E("transport error", Some(Box::new(E("tcp connect error", Some(Box::new(refused))))));
        assert_eq!(super::error_chain(&e), "transport error: tcp connect error: Connection refused (os error 111)");
        let repeated = E("tcp connect error: boom", Some(Box::new(E("boom", None))));
        assert_eq!(super::error_chain(&repeated), "tcp connect error: boom");
    }
}
