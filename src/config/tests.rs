//! The configuration's parsing, resolution and checks.

use super::*;

const MIN: &str = r#"
[vault]
db = "data/vault.db"
master_key_file = "/run/secrets/master.key"

[server]
listen = "127.0.0.1:8443"
cert = "tls/server.pem"
key = "tls/server-key.pem"
client_ca = "tls/ca.pem"
policy = "policy.toml"
"#;

#[test]
fn minimal_config_with_defaults_and_relative_paths() {
    let c = Config::parse(MIN, Path::new("/etc/pogo/config.toml")).unwrap();
    c.validate(Path::new("x")).unwrap();
    assert_eq!(c.vault.db, PathBuf::from("/etc/pogo/data/vault.db"));
    assert_eq!(c.audit_db(), PathBuf::from("/etc/pogo/data/vault-audit.db"));
    assert_eq!(c.server.max_request_bytes, 65536);
    assert!(c.server.return_subscription_key);
    assert_eq!(c.tokens.upstream_rate_per_second, 2.0);
}

/// Regression (found by `hardening_fuzz`, rarely): a `log.level` with multi-byte
/// characters panicked inside tracing-subscriber's directive parser during `validate`.
#[test]
fn a_log_level_with_multibyte_characters_is_refused_not_a_panic() {
    for level in ["\tȺ \u{116ff}\t\u{18c76}=\u{234c3}Qe\u{202e}''\\:{", "pogo_vault=débug", "info\n"] {
        let e = log_filter(level).unwrap_err();
        assert!(e.contains("printable ASCII"), "{e}");
    }
    assert!(log_filter("info,pogo_vault=debug").is_ok());
}

#[test]
fn env_overrides_replace_the_master_key_source() {
    let mut c = Config::parse(MIN, Path::new("c.toml")).unwrap();
    c.apply_env(|k| (k == "POGO_VAULT_MASTER_PASSPHRASE_ENV").then(|| "PASS".to_owned()));
    assert!(matches!(c.master_key_source(), Ok(MasterKeySource::PassphraseEnv(v)) if v == "PASS"));
}

#[test]
fn errors_name_the_line_or_key() {
    let bad = MIN.replace("listen = \"127.0.0.1:8443\"", "listen = \"nowhere\"");
    let e = Config::parse(&bad, Path::new("c.toml")).unwrap_err();
    assert!(e.to_string().contains("line 7"), "{e}");
    let bad = format!("{MIN}\n[tokens]\nupstream_rate_per_second = 50\n");
    let c = Config::parse(&bad, Path::new("c.toml")).unwrap();
    let e = c.validate(Path::new("c.toml")).unwrap_err();
    assert!(e.to_string().contains("upstream_rate_per_second"), "{e}");
    let bad = format!("{MIN}\n[tokens]\nunknown_knob = 1\n");
    assert!(Config::parse(&bad, Path::new("c.toml")).unwrap_err().to_string().contains("unknown"));
}

#[test]
fn witness_section_is_parsed_resolved_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "{MIN}\n[audit.witness]\nbacklog = 50\nretry_max_secs = 2\n[audit.witness.file]\npath = \"w.jsonl\"\n\
         [audit.witness.syslog]\naddress = \"127.0.0.1:6514\"\n"
    );
    let c = Config::parse(&text, &path).unwrap();
    c.validate(&path).unwrap();
    let a = c.audit_config();
    assert_eq!(a.witness.backlog, 50);
    assert_eq!(a.witness.file.as_ref().unwrap().path, dir.path().join("w.jsonl"));
    assert_eq!(a.witness.syslog.as_ref().unwrap().address, "127.0.0.1:6514");

    let bad = text.replace("127.0.0.1:6514", "no-port");
    let e = Config::parse(&bad, &path).unwrap().validate(&path).unwrap_err();
    assert!(e.to_string().contains("audit.witness.syslog.address"), "{e}");
    let bad = text.replace("address =", "adress =");
    assert!(Config::parse(&bad, &path).unwrap_err().to_string().contains("adress"));
    let bad = format!("{text}tls = true\n");
    let e = Config::parse(&bad, &path).unwrap().validate(&path).unwrap_err();
    assert!(e.to_string().contains("audit.witness.syslog.ca"), "{e}");
}

#[test]
fn audit_sinks_are_parsed_resolved_and_validated() {
    let (dir, sink) = (tempfile::tempdir().unwrap(), "[[audit.sink]]\nname = ");
    let path = dir.path().join("c.toml");
    let text = format!(
        "{MIN}\n{sink}\"shipper\"\nkind = \"file\"\npath = \"audit.jsonl\"\n\
         {sink}\"siem\"\nkind = \"syslog\"\naddress = \"siem.internal:6514\"\n"
    );
    let c = Config::parse(&text, &path).unwrap();
    c.validate(&path).unwrap();
    let a = c.audit_config();
    assert_eq!(a.sinks[0].path.as_deref(), Some(dir.path().join("audit.jsonl").as_path()));
    assert_eq!(a.sink_cursors.as_deref(), Some(c.vault.db.as_path()), "cursors live in the vault database");
    let bad = text.replace("siem.internal:6514", "no-port");
    let e = Config::parse(&bad, &path).unwrap().validate(&path).unwrap_err();
    assert!(e.to_string().contains("audit.sink.address") && e.to_string().contains("siem"), "{e}");
}

#[test]
fn the_tls_source_takes_files_or_the_spiffe_workload_api_and_errors_name_the_key() {
    let path = std::path::Path::new("/etc/pogo-vault/c.toml");
    let no_env = |_: &str| None;
    let c = Config::parse(MIN, path).unwrap();
    assert_eq!(c.server.check_tls_source(no_env), Ok(()));
    assert_eq!(c.server.spiffe(no_env), None);
    let files_out: String = MIN
        .lines()
        .filter(|l| !l.starts_with("cert") && !l.starts_with("key") && !l.starts_with("client_ca"))
        .map(|l| format!("{l}\n"))
        .collect();
    let spiffe = files_out.replace("[server]\n", "[server]\ntls_source = \"spiffe\"\n");
    let c = Config::parse(&spiffe, path).unwrap();
    assert_eq!(c.server.check_tls_source(no_env).unwrap_err().0, "server.spiffe_socket");
    let env = |k: &str| (k == "SPIFFE_ENDPOINT_SOCKET").then(|| "unix:/run/spire/agent.sock".to_owned());
    assert_eq!(c.server.check_tls_source(env), Ok(()));
    assert_eq!(c.server.spiffe(env).unwrap().socket, "unix:/run/spire/agent.sock");
    let with = |extra: &str| {
        Config::parse(
            &spiffe.replace("tls_source = \"spiffe\"\n", &format!("tls_source = \"spiffe\"\n{extra}\n")),
            path,
        )
        .unwrap()
    };
    assert_eq!(
        with("spiffe_socket = \"/run/agent.sock\"").server.check_tls_source(no_env).unwrap_err().0,
        "server.spiffe_socket"
    );
    let bad_td = with("spiffe_socket = \"unix:/a\"\nspiffe_trust_domains = [\"spiffe://x\"]");
    assert_eq!(bad_td.server.check_tls_source(no_env).unwrap_err().0, "server.spiffe_trust_domains");
    let both = Config::parse(
        &MIN.replace("[server]\n", "[server]\ntls_source = \"spiffe\"\nspiffe_socket = \"unix:/a\"\n"),
        path,
    )
    .unwrap();
    assert_eq!(both.server.check_tls_source(no_env).unwrap_err().0, "server.tls_source");
    let missing = Config::parse(&files_out, path).unwrap();
    assert_eq!(missing.server.check_tls_source(no_env).unwrap_err().0, "server.cert");
}

#[test]
fn the_gateway_raises_the_shared_rate_and_withholds_the_subscription_key_unless_the_file_says_otherwise() {
    let on = format!("{MIN}\n[gateway]\nlisten = \"127.0.0.1:8444\"\n");
    let c = Config::parse(&on, Path::new("c.toml")).unwrap();
    c.validate(Path::new("c.toml")).unwrap();
    assert_eq!(c.tokens.upstream_rate_per_second, gateway::GATEWAY_DEFAULT_RATE);
    assert_eq!(c.tokens.upstream_burst, gateway::GATEWAY_DEFAULT_BURST);
    assert!(c.tokens.upstream_rate_per_second + f64::from(c.tokens.upstream_burst) <= 10.0, "within Go's 10 a second");
    assert!(!c.server.return_subscription_key);
    let g = c.gateway.as_ref().unwrap();
    assert_eq!((g.max_request_bytes, g.replay_body_bytes, g.max_queue_wait_secs), (32 << 20, 64 << 10, 2.0));

    // What the file sets stays as written (`[server]` is MIN's last table).
    let set = on.replace("policy = \"policy.toml\"\n", "policy = \"policy.toml\"\nreturn_subscription_key = true\n")
        + "\n[tokens]\nupstream_rate_per_second = 5\nupstream_burst = 4\n";
    let c = Config::parse(&set, Path::new("c.toml")).unwrap();
    assert_eq!((c.tokens.upstream_rate_per_second, c.tokens.upstream_burst), (5.0, 4));
    assert!(c.server.return_subscription_key);

    for (extra, key) in [
        ("listen = \"127.0.0.1:8443\"\n", "gateway.listen"),
        ("listen = \"127.0.0.1:1\"\nmax_request_bytes = 10\n", "gateway.max_request_bytes"),
        ("listen = \"127.0.0.1:1\"\nreplay_body_bytes = 2000000\n", "gateway.replay_body_bytes"),
        ("listen = \"127.0.0.1:1\"\nmax_queue_wait_secs = 0\n", "gateway.max_queue_wait_secs"),
        ("listen = \"127.0.0.1:1\"\nrequest_timeout_secs = -1\n", "gateway.request_timeout_secs"),
    ] {
        let c = Config::parse(&format!("{MIN}\n[gateway]\n{extra}"), Path::new("c.toml")).unwrap();
        let e = c.validate(Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
    let e = Config::parse(&format!("{MIN}\n[gateway]\nlisten = \"127.0.0.1:1\"\nknob = 1\n"), Path::new("c.toml"))
        .unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    // A [gateway] table without listen: off, and the defaults it would change stay.
    let off = Config::parse(&format!("{MIN}\n[gateway]\nmax_queue_wait_secs = 3\n"), Path::new("c.toml")).unwrap();
    off.validate(Path::new("c.toml")).unwrap();
    assert!(crate::server::ServeOptions::from_config(&off).unwrap().gateway.is_none());
    assert_eq!(off.tokens.upstream_rate_per_second, 2.0);
    assert!(off.server.return_subscription_key);
}
