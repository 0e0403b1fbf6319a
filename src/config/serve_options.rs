//! The server's options from the configuration file.

use super::Config;

/// What `serve` starts with, from a validated configuration. Here, not in `server`: the
/// configuration knows the server's options, the server does not know the file.
impl crate::server::ServeOptions {
    pub fn from_config(c: &Config) -> Result<Self, crate::server::ServeError> {
        Ok(Self {
            db: c.vault.db.clone(),
            audit_db: c.audit_db(),
            master_key: c.master_key_source().map_err(crate::server::ServeError::Config)?,
            listen: c.server.listen,
            tls: crate::tls::ServerTlsFiles {
                cert: c.server.cert.clone(),
                key: c.server.key.clone(),
                client_ca: c.server.client_ca.clone(),
                crls: c.server.crls.clone(),
            },
            policy: c.server.policy.clone(),
            upstream: c.upstream(),
            tokens: c.tokens.clone(),
            audit: c.audit_config(),
            max_request_bytes: c.server.max_request_bytes,
            request_timeout: c.request_timeout(),
            concurrency_limit_per_connection: c.server.concurrency_limit_per_connection,
            handshake_timeout: c.handshake_timeout(),
            max_pending_handshakes_per_address: c.server.max_pending_handshakes_per_address,
            return_subscription_key: c.server.return_subscription_key,
            caller_requests_per_second: c.server.caller_requests_per_second,
            metrics_listen: c.server.metrics_listen,
            health_listen: c.server.health_listen,
            watch_files: c.server.watch_files.then_some(crate::server::WATCH_EVERY),
            spiffe: c.server.spiffe(|k| std::env::var(k).ok()),
            gateway: c.gateway.as_ref().and_then(super::gateway::GatewaySection::options),
            postgres: c.storage.postgres_options(),
        })
    }
}

impl super::ServerSection {
    /// The SPIFFE options with `tls_source = "spiffe"` (`env` reads `SPIFFE_ENDPOINT_SOCKET`
    /// when `spiffe_socket` is not set), `None` with files.
    pub fn spiffe(&self, env: impl Fn(&str) -> Option<String>) -> Option<crate::server::SpiffeOptions> {
        (self.tls_source == super::TlsSourceKind::Spiffe).then(|| crate::server::SpiffeOptions {
            socket: self.spiffe_socket.clone().or_else(|| env("SPIFFE_ENDPOINT_SOCKET")).unwrap_or_default(),
            trust_domains: self.spiffe_trust_domains.clone(),
        })
    }

    /// The TLS source's keys agree: files need `cert`, `key` and `client_ca`; SPIFFE needs
    /// a socket and takes none of the files. `Err((key, reason))` names the key.
    pub(super) fn check_tls_source(&self, env: impl Fn(&str) -> Option<String>) -> Result<(), (&'static str, String)> {
        let files = [("server.cert", &self.cert), ("server.key", &self.key), ("server.client_ca", &self.client_ca)];
        let Some(spiffe) = self.spiffe(env) else {
            if let Some((key, _)) = files.iter().find(|(_, p)| p.as_os_str().is_empty()) {
                return Err((key, "required with tls_source = \"files\" (the default)".into()));
            }
            if self.spiffe_socket.is_some() || !self.spiffe_trust_domains.is_empty() {
                return Err((
                    "server.tls_source",
                    "spiffe_socket and spiffe_trust_domains need tls_source = \"spiffe\"".into(),
                ));
            }
            return Ok(());
        };
        if files.iter().any(|(_, p)| !p.as_os_str().is_empty()) || !self.crls.is_empty() {
            let reason = "with tls_source = \"spiffe\" the certificate, key and CAs come from the Workload API: remove cert, key, client_ca and crls";
            return Err(("server.tls_source", reason.into()));
        }
        let s = &spiffe.socket;
        if s.is_empty() {
            return Err(("server.spiffe_socket", "not set, and SPIFFE_ENDPOINT_SOCKET is not set either".into()));
        }
        // A Unix socket only: the Workload API has no authentication of its own, and whoever
        // answers supplies the bundles that authenticate every caller.
        if !s.starts_with("unix:") {
            return Err(("server.spiffe_socket", format!("{s:?} is not unix:PATH (the agent's Unix socket)")));
        }
        for td in &spiffe.trust_domains {
            let ok = !td.is_empty()
                && td.len() <= 255
                && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
            if !ok {
                return Err((
                    "server.spiffe_trust_domains",
                    format!("{td:?} is not a trust domain name (lowercase letters, digits, - . _)"),
                ));
            }
        }
        Ok(())
    }
}
