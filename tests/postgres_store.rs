#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The vault on PostgreSQL: a real throwaway cluster per test (`common::pg`), the same
//! vault operations as on SQLite with the same results, the two schemas column for
//! column, no plaintext secret in any row, writes from two vaults ("replicas") on one
//! database serialised, a restart of the server survived, TLS `verify-full` with our CA,
//! and settings refused with the field named.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixture;
use common::pg::PgCluster;
use pogo_vault::crypto::{ClientKey, MasterKeySource, SubscriptionKey};
use pogo_vault::domain::{Environment, TenantId, TenantStatus};
use pogo_vault::store::onboarding::{Session, SessionStatus};
use pogo_vault::store::{Backend, PostgresOptions, Store};
use pogo_vault::vault::{Argon2Costs, InitKey, IntegrationInput, NewTenant, UnauditedFixture, Vault, VaultError};

const IDS: [&str; 5] = ["t-1", "t.1", "t_1", "t1", "u0"];

fn tid(s: &str) -> TenantId {
    s.parse().unwrap()
}

fn integration(sub: &str) -> IntegrationInput {
    IntegrationInput {
        environment: Environment::Demo,
        application_key: fixture::APP_KEY.to_owned(),
        base_url: "http://127.0.0.1:9/".to_owned(),
        subscription_key: SubscriptionKey::parse(sub).unwrap(),
        allow_custom_base_url: true,
    }
}

/// The same operations on any vault; what a caller could observe of them, without the
/// times and the per-vault fingerprint keys.
fn exercise(vault: &Vault) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let gate = &UnauditedFixture;
    vault.set_integration(&integration("d3d3d3d3e4e4e4e4f5f5f5f5a6a6a6a6"), gate).unwrap();
    vault.set_integration(&integration("b7b7b7b7c8c8c8c8d9d9d9d9e0e0e0e0"), gate).unwrap();
    let rec = vault.integration(Environment::Demo).unwrap().unwrap();
    seen.insert(
        "integration".into(),
        format!("{} v{} {:?}", rec.subscription_key_hint.as_str(), rec.subscription_key_version, rec.active_slot),
    );
    let opened = vault.open_subscription_key(&rec).unwrap();
    seen.insert(
        "subscription key opens".into(),
        (opened.expose_secret() == "b7b7b7b7c8c8c8c8d9d9d9d9e0e0e0e0").to_string(),
    );

    let batch: Vec<(NewTenant, ClientKey)> =
        IDS.iter().enumerate().map(|(i, id)| (NewTenant::new(tid(id), Environment::Demo), fixture::key(i))).collect();
    let refs: Vec<(NewTenant, &ClientKey)> = batch.iter().map(|(n, k)| (n.clone(), k)).collect();
    vault.add_tenants(&refs, gate).unwrap();
    let again = vault.add_tenant(&NewTenant::new(tid("t1"), Environment::Demo), &fixture::key(9), gate);
    seen.insert("duplicate".into(), format!("{:?}", again.err().map(|e| e.to_string())));

    let rotated = vault.rotate_key(&tid("t1"), &fixture::key(7), Some("7007"), gate).unwrap();
    seen.insert(
        "rotated".into(),
        format!("v{} {:?} {}", rotated.key_version, rotated.go_client_id, rotated.key_hint.as_str()),
    );
    let key = vault.open_client_key(&rotated).unwrap();
    seen.insert("rotated key opens".into(), (key.expose_secret() == fixture::sim_key(7)).to_string());
    assert!(!vault.mark_key_rejected(&tid("t1"), 1, gate).unwrap(), "an old version is not marked");
    assert!(vault.mark_key_rejected(&tid("t1"), 2, gate).unwrap());
    vault.set_status(&tid("u0"), TenantStatus::Disabled, gate).unwrap();
    vault.delete_tenant(&tid("t.1"), gate).unwrap();
    let missing = vault.delete_tenant(&tid("t.1"), gate).err().map(|e| e.to_string());
    seen.insert("delete twice".into(), format!("{missing:?}"));
    vault.set_go_client_id(&tid("t-1"), 1, "7000", gate).unwrap();
    assert!(vault.set_go_client_id(&tid("t-1"), 1, "7999", gate).unwrap().is_none(), "a fill-in never overwrites");
    vault.touch_last_tokens(&[(tid("t_1"), 5_000), (tid("t_1"), 4_000)]).unwrap();

    let listed: Vec<String> = vault
        .list_tenants(None, 100)
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {} v{} {:?} {:?} {}",
                t.tenant_id,
                t.status.as_str(),
                t.key_version,
                t.go_client_id,
                t.last_token_at,
                t.key_hint.as_str()
            )
        })
        .collect();
    seen.insert("list".into(), listed.join(" | "));
    let page: Vec<String> =
        vault.list_tenants(Some("t-1"), 2).unwrap().iter().map(|t| t.tenant_id.to_string()).collect();
    seen.insert("page after t-1".into(), page.join(","));
    let range: Vec<String> =
        vault.list_tenants_in_range("t-", "t_", 10).unwrap().iter().map(|t| t.tenant_id.to_string()).collect();
    seen.insert("range".into(), range.join(","));
    seen.insert("counts".into(), format!("{:?}", vault.count_tenants_by_status().unwrap()));

    let session = Session {
        onboarding_id: "ob-1".into(),
        environment: Environment::Demo,
        redirect_url: "https://app.example/done".into(),
        organization_number: None,
        tenant_id_prefix: "ob-".into(),
        caller: "spiffe://test.pogo/app".into(),
        created_at: 1,
        expires_at: i64::MAX,
        status: SessionStatus::Pending,
        go_status: None,
        tenants: vec![],
        subject_hash: Some("k:abc".into()),
    };
    vault.insert_onboarding(&session, gate).unwrap();
    let t1 = vault.onboarding_transition("ob-1", SessionStatus::Pending, SessionStatus::Completing, None).unwrap();
    let t2 = vault.onboarding_transition("ob-1", SessionStatus::Pending, SessionStatus::Completing, None).unwrap();
    let t3 =
        vault.onboarding_transition("ob-1", SessionStatus::Completing, SessionStatus::Failed, Some("Aborted")).unwrap();
    let s = vault.onboarding("ob-1").unwrap().unwrap();
    seen.insert("onboarding".into(), format!("{t1} {t2} {t3} {:?} {:?} {:?}", s.status, s.go_status, s.subject_hash));
    seen.insert("schema".into(), vault.schema_version().unwrap().to_string());
    seen
}

/// Every byte the vault's PostgreSQL tables hold, as text (bytea as hex).
fn dump(cluster: &PgCluster, db: &str) -> String {
    let mut admin = cluster.admin(db);
    let tables: Vec<String> = admin
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = String::new();
    for t in tables {
        for row in admin.query(&format!("SELECT CAST(x AS TEXT) FROM {t} AS x"), &[]).unwrap() {
            out.push_str(row.get::<_, &str>(0));
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_vault_behaves_the_same_on_postgres_as_on_sqlite_and_no_row_holds_a_plaintext_key() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();

    let sqlite_key = dir.path().join("sqlite.key");
    let on_sqlite =
        Vault::init(&dir.path().join("v.db"), &InitKey::GenerateKeyFile(sqlite_key), Argon2Costs::default()).unwrap();
    assert_eq!(on_sqlite.backend(), Backend::Sqlite);
    let pg_key = dir.path().join("pg.key");
    let options = cluster.options("vault");
    let on_pg =
        Vault::init_postgres(&options, &InitKey::GenerateKeyFile(pg_key.clone()), Argon2Costs::default()).unwrap();
    assert_eq!(on_pg.backend(), Backend::Postgres);
    assert_eq!(on_pg.location(), format!("postgres://127.0.0.1:{}/vault", cluster.port));

    let a = exercise(&on_sqlite);
    let b = exercise(&on_pg);
    assert_eq!(a, b, "the same operations must give the same results on both backends");
    assert_eq!(
        b["list"].split(" | ").map(|l| l.split(' ').next().unwrap()).collect::<Vec<_>>(),
        ["t-1", "t1", "t_1", "u0"]
    );
    assert_eq!(b["range"], "t-1,t1", "byte order, not the database's linguistic collation");
    println!("{b:#?}");

    // init again is refused; nothing is written.
    let again =
        Vault::init_postgres(&options, &InitKey::GenerateKeyFile(dir.path().join("k2")), Argon2Costs::default());
    assert!(matches!(again, Err(VaultError::Store(_))), "{again:?}");
    assert!(again.unwrap_err().to_string().contains("already initialised"));
    assert!(!dir.path().join("k2").exists(), "a refused init leaves no key file");

    // The master key rotates on PostgreSQL too; the old key stops opening the vault.
    let new_key = dir.path().join("pg2.key");
    on_pg.rotate_kek(&InitKey::GenerateKeyFile(new_key.clone()), Argon2Costs::default(), &UnauditedFixture).unwrap();
    drop(on_pg);
    let old = Vault::unlock_postgres(&options, &MasterKeySource::KeyFile(pg_key)).unwrap_err().to_string();
    assert!(
        old.contains("master key") && old.contains("rotated"),
        "the retired master key must not open the vault: {old}"
    );
    let reopened = Vault::unlock_postgres(&options, &MasterKeySource::KeyFile(new_key)).unwrap();
    let t = reopened.tenant(&tid("t_1")).unwrap().unwrap();
    assert_eq!(reopened.open_client_key(&t).unwrap().expose_secret(), fixture::sim_key(2));

    // Sealed blobs only: no client key or subscription key in any row, in any form.
    let text = dump(&cluster, "vault");
    assert!(text.contains("\\x") && text.contains("t_1") && text.len() > 2000, "the dump reads the rows");
    let mut secrets: Vec<String> = (0..10).map(fixture::sim_key).collect();
    secrets.push("b7b7b7b7c8c8c8c8d9d9d9d9e0e0e0e0".into());
    secrets.push("d3d3d3d3e4e4e4e4f5f5f5f5a6a6a6a6".into());
    for s in &secrets {
        for form in common::leak_forms(s) {
            assert!(
                !text.as_bytes().windows(form.len()).any(|w| w.eq_ignore_ascii_case(&form)),
                "a plaintext secret in a PostgreSQL row"
            );
            let hex: String = form.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!text.contains(&hex), "a plaintext secret (as bytea hex) in a PostgreSQL row");
        }
    }
}

/// Columns as `name type nullable`, per table, for either backend.
fn sqlite_columns(path: &Path) -> BTreeMap<String, Vec<String>> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut out = BTreeMap::new();
    let mut tables = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
    let names: Vec<String> = tables.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    for t in names {
        let mut cols =
            conn.prepare(&format!("SELECT name, type, \"notnull\", pk FROM pragma_table_info('{t}')")).unwrap();
        let list = cols
            .query_map([], |r| {
                let ty: String = r.get(1)?;
                let ty = match ty.as_str() {
                    "INTEGER" => "bigint",
                    "TEXT" => "text",
                    "BLOB" => "bytea",
                    other => panic!("unexpected SQLite type {other}"),
                };
                let not_null = r.get::<_, i64>(2)? == 1 || r.get::<_, i64>(3)? > 0;
                Ok(format!("{} {ty} {}", r.get::<_, String>(0)?, if not_null { "NOT NULL" } else { "NULL" }))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.insert(t, list);
    }
    out
}

fn postgres_columns(cluster: &PgCluster, db: &str) -> BTreeMap<String, Vec<String>> {
    let mut admin = cluster.admin(db);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let rows = admin
        .query(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> 'pogo_schema' ORDER BY table_name, ordinal_position",
            &[],
        )
        .unwrap();
    for r in rows {
        let (t, c, ty, null): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        out.entry(t).or_default().push(format!("{c} {ty} {}", if null == "YES" { "NULL" } else { "NOT NULL" }));
    }
    out
}

#[test]
fn both_schemas_have_the_same_tables_and_columns_at_the_same_version() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let mut sqlite = Store::create(&path).unwrap();
    let mut pg = Store::connect_postgres(&cluster.options("vault")).unwrap();
    assert_eq!(sqlite.schema_version().unwrap(), pg.schema_version().unwrap());
    assert_eq!(pg.schema_version().unwrap(), pogo_vault::store::supported_schema_version());
    drop(sqlite);
    let a = sqlite_columns(&path);
    let b = postgres_columns(&cluster, "vault");
    assert!(a.len() >= 8, "{a:?}");
    assert_eq!(a, b, "the PostgreSQL baseline must match the SQLite migrations column for column");

    // Connecting again migrates nothing; a newer schema is refused.
    drop(pg);
    Store::connect_postgres(&cluster.options("vault")).unwrap();
    cluster.admin("vault").batch_execute("UPDATE pogo_schema SET version = 99").unwrap();
    let err = Store::connect_postgres(&cluster.options("vault")).unwrap_err().to_string();
    assert!(err.contains("newer than this binary"), "{err}");
}

#[test]
fn two_vaults_on_one_database_write_one_after_the_other_and_see_each_others_changes() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("m.key");
    let options = cluster.options("vault");
    let a = Arc::new(
        Vault::init_postgres(&options, &InitKey::GenerateKeyFile(key.clone()), Argon2Costs::default()).unwrap(),
    );
    let b = Arc::new(Vault::unlock_postgres(&options, &MasterKeySource::KeyFile(key)).unwrap());
    a.add_tenant(&NewTenant::new(tid("shared"), Environment::Demo), &fixture::key(0), &UnauditedFixture).unwrap();
    assert_eq!(b.tenant(&tid("shared")).unwrap().unwrap().key_version, 1, "b reads what a wrote");

    // Rotations from both at once: each reads the version and writes the next; without the
    // write lock two would pick the same version and one would fail on the primary key.
    let rounds = 25;
    let workers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, v)| {
            std::thread::spawn(move || {
                for i in 0..rounds {
                    v.rotate_key(&tid("shared"), &fixture::key(100 + w * rounds + i), None, &UnauditedFixture).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let t = a.tenant(&tid("shared")).unwrap().unwrap();
    assert_eq!(t.key_version, 1 + 2 * rounds as i64);
    let sealed: i64 = cluster
        .admin("vault")
        .query_one("SELECT COUNT(*) FROM sealed_secrets WHERE purpose = 'client-key' AND owner = 'shared'", &[])
        .unwrap()
        .get(0);
    assert_eq!(sealed, 1, "every older version destroyed");
    let key = b.open_client_key(&t).unwrap();
    assert!((100..100 + 2 * rounds).any(|i| key.expose_secret() == fixture::sim_key(i)));

    // a rotates the master key; b still holds the retired one and must not seal under it.
    let new_key = dir.path().join("m2.key");
    a.rotate_kek(&InitKey::GenerateKeyFile(new_key), Argon2Costs::default(), &UnauditedFixture).unwrap();
    let refused = b.add_tenant(&NewTenant::new(tid("late"), Environment::Demo), &fixture::key(1), &UnauditedFixture);
    let e = refused.unwrap_err();
    assert!(matches!(e, VaultError::MasterKeyRotated { .. }) && e.is_transient(), "{e}");
    let refused = b.rotate_key(&tid("shared"), &fixture::key(2), None, &UnauditedFixture).unwrap_err();
    assert!(matches!(refused, VaultError::MasterKeyRotated { .. }), "{refused}");
    assert!(a.tenant(&tid("late")).unwrap().is_none(), "nothing written under the retired key");
    let rewrapped = b.tenant(&tid("shared")).unwrap().unwrap();
    let e = b.open_client_key(&rewrapped).unwrap_err();
    assert!(matches!(e, VaultError::MasterKeyRotated { .. }), "not an integrity alarm: {e}");
    a.add_tenant(&NewTenant::new(tid("late"), Environment::Demo), &fixture::key(1), &UnauditedFixture).unwrap();
}

/// A TCP relay to the cluster that can be frozen: connections stay open, nothing passes.
struct Relay {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let f = f.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let Ok(n) = from.read(&mut buf) else { return };
                            if n == 0 {
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            while f.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Relay { port, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_server_that_stops_answering_fails_calls_in_bounded_time_and_is_left_behind() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(cluster.port);
    let mut o = cluster.options("vault");
    o.url = format!("postgresql://{}@127.0.0.1:{}/vault", common::pg::USER, relay.port);
    o.statement_timeout = Duration::from_secs(1);
    o.connect_timeout = Duration::from_secs(1);
    let vault =
        Vault::init_postgres(&o, &InitKey::GenerateKeyFile(dir.path().join("m.key")), Argon2Costs::default()).unwrap();
    vault.add_tenant(&NewTenant::new(tid("t"), Environment::Demo), &fixture::key(0), &UnauditedFixture).unwrap();

    // Established connection, server silent: the call fails within statement timeout + 5 s.
    relay.freeze(true);
    let start = Instant::now();
    let e = vault.tenant(&tid("t")).unwrap_err();
    let took = start.elapsed();
    println!("a call to a silent server failed after {took:?}: {e}");
    assert!(e.is_transient() && e.to_string().contains("did not answer"), "{e}");
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(9), "{took:?}");

    // Connecting to a silent server: bounded too (connect timeout + 5 s).
    let start = Instant::now();
    let e = vault.tenant(&tid("t")).unwrap_err();
    let took = start.elapsed();
    println!("connecting to a silent server failed after {took:?}: {e}");
    assert!(e.is_transient(), "{e}");
    assert!(took < Duration::from_secs(9), "{took:?}");

    // A multi-host URL whose first host accepts and stays silent: the second is tried
    // after the first one's own deadline, not given up with it.
    let mut two = o.clone();
    two.url = format!(
        "postgresql://{}@127.0.0.1:{},127.0.0.1:{}/vault?target_session_attrs=read-write",
        common::pg::USER,
        relay.port,
        cluster.port
    );
    let start = Instant::now();
    let mut store = Store::connect_postgres(&two).unwrap();
    println!("past a silent first host to the second in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(9));
    assert_eq!(store.db().unwrap().query("SELECT 1", &[]).unwrap().len(), 1);
    drop(store);

    // The server answers again: the next call connects afresh and is served.
    relay.freeze(false);
    let t = vault.tenant(&tid("t")).unwrap().unwrap();
    assert_eq!(vault.open_client_key(&t).unwrap().expose_secret(), fixture::sim_key(0));
    drop(vault);

    // A replica that goes silent while it holds the write lock (the network drops every
    // packet: the server cannot tell) keeps it only until the server's idle-in-transaction
    // limit (its call timeout + 5 s, here 11 s after its last statement); another replica's
    // writes fail UNAVAILABLE (retry) meanwhile and then go through.
    let mut stuck = Store::connect_postgres(&o).unwrap();
    let mut tx = stuck.write_tx().unwrap();
    let last_statement = Instant::now();
    relay.freeze(true);
    let e = pogo_vault::store::Sql::query(&mut tx, "SELECT 1", &[]).unwrap_err();
    assert!(e.to_string().contains("did not answer"), "{e}");
    drop(tx);
    let other =
        Vault::unlock_postgres(&cluster.options("vault"), &MasterKeySource::KeyFile(dir.path().join("m.key"))).unwrap();
    let mut refusals = 0;
    loop {
        match other.add_tenant(&NewTenant::new(tid("other"), Environment::Demo), &fixture::key(1), &UnauditedFixture) {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                refusals += 1;
            }
        }
        assert!(last_statement.elapsed() < Duration::from_secs(16), "the lock outlived the server's idle limit");
    }
    println!(
        "another replica wrote {:?} after the silent one's last statement ({refusals} lock timeouts first)",
        last_statement.elapsed()
    );
    relay.freeze(false);

    // A holder that dies (its socket closes) releases the lock at once.
    let mut dying = Store::connect_postgres(&cluster.options("vault")).unwrap();
    let tx = dying.write_tx().unwrap();
    std::mem::forget(tx);
    drop(dying);
    let start = Instant::now();
    other.add_tenant(&NewTenant::new(tid("next"), Environment::Demo), &fixture::key(2), &UnauditedFixture).unwrap();
    println!("after a holder's connection closed, the next write took {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Regression: callers of the shared-state connection (the budget's bookings, leases,
/// shared tokens) queued on a mutex, so behind a silent server each waited for every one
/// before it to time out in turn (8 callers: about 48 s). Now bookings run on a pool and
/// leases on a gate of one, and each caller waits at most the call timeout for a
/// connection, then fails UNAVAILABLE.
#[test]
fn callers_of_the_shared_state_connection_all_fail_in_bounded_time_behind_a_silent_server() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let relay = Relay::start(cluster.port);
    let mut o = cluster.options("vault");
    o.url = format!("postgresql://{}@127.0.0.1:{}/vault", common::pg::USER, relay.port);
    o.statement_timeout = Duration::from_secs(1);
    o.connect_timeout = Duration::from_secs(1);
    let shared = Arc::new(pogo_vault::store::shared::Shared::connect(&o).unwrap());
    let book = |s: &pogo_vault::store::shared::Shared| {
        s.reserve("demo", Duration::from_millis(100), 10, Duration::from_secs(1))
    };
    book(&shared).unwrap();
    assert!(shared.try_lease("warm").unwrap());
    shared.release("warm").unwrap();

    // Four bookings (the budget's pool) and four leases (the one lease connection).
    relay.freeze(true);
    let start = Instant::now();
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let r = match i % 2 {
                    0 => book(&shared).map(|_| ()),
                    _ => shared.try_lease(&format!("t{i}")).map(|_| ()),
                };
                (r, start.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in callers {
        let (r, took) = c.join().unwrap();
        let e = r.unwrap_err();
        assert!(matches!(e, pogo_vault::store::StoreError::Unavailable(_)), "{e}");
        slowest = slowest.max(took);
    }
    println!(
        "8 callers of the shared state (4 bookings, 4 leases) behind a silent server: all failed within {slowest:?}"
    );
    // One call's deadline (6 s), then one reconnect's (6 s), at most: 12 s, never one per
    // caller (48 s behind the mutex this replaced). The margin is for a loaded machine.
    assert!(slowest < Duration::from_secs(20), "{slowest:?}");

    relay.freeze(false);
    book(&shared).unwrap();
}

#[test]
fn a_vault_connects_again_after_the_server_restarts() {
    let mut cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("m.key");
    let vault = Vault::init_postgres(&cluster.options("vault"), &InitKey::GenerateKeyFile(key), Argon2Costs::default())
        .unwrap();
    vault.add_tenant(&NewTenant::new(tid("before"), Environment::Demo), &fixture::key(0), &UnauditedFixture).unwrap();

    cluster.restart_immediate(&[]);
    let start = Instant::now();
    let mut failures = Vec::new();
    let t = loop {
        match vault.tenant(&tid("before")) {
            Ok(t) => break t.unwrap(),
            Err(e) => {
                assert!(e.is_transient(), "a lost connection is worth a retry: {e}");
                failures.push(e.to_string());
                assert!(start.elapsed() < Duration::from_secs(10), "{failures:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    println!("served again after {:?}; failed calls meanwhile: {failures:?}", start.elapsed());
    assert!(
        failures.is_empty(),
        "the closed connection is noticed before the call, which connects again: {failures:?}"
    );
    assert_eq!(vault.open_client_key(&t).unwrap().expose_secret(), fixture::sim_key(0));
    vault.add_tenant(&NewTenant::new(tid("after"), Environment::Demo), &fixture::key(1), &UnauditedFixture).unwrap();
    assert_eq!(vault.list_tenants(None, 10).unwrap().len(), 2);
}

#[test]
fn settings_are_refused_with_the_field_named_and_no_password_shown() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();
    let fail = |o: &PostgresOptions| Store::connect_postgres(o).unwrap_err().to_string();

    let mut o = cluster.options("vault");
    o.password_file = Some(dir.path().join("missing"));
    let e = fail(&o);
    assert!(e.contains("storage.postgres.password_file") && e.contains("missing"), "{e}");

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password-xyz\n").unwrap();
    o.password_file = Some(wrong);
    let e = fail(&o);
    assert!(e.contains("password authentication failed") && !e.contains("not-the-password-xyz"), "{e}");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    o.password_file = Some(empty);
    assert!(fail(&o).contains("is empty"));

    let with_password = PostgresOptions::new(format!(
        "postgresql://{}:{}@127.0.0.1:{}/vault",
        common::pg::USER,
        cluster.password(),
        cluster.port
    ));
    let e = fail(&with_password);
    assert!(e.contains("storage.postgres.url") && !e.contains(cluster.password()), "{e}");

    let mut nowhere = cluster.options("vault");
    nowhere.url = format!("postgresql://{}@127.0.0.1:{}/vault", common::pg::USER, cluster.port + 1);
    nowhere.connect_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let e = fail(&nowhere);
    assert!(start.elapsed() < Duration::from_secs(5), "a refused connection fails fast");
    assert!(e.contains("database unavailable") && e.contains("refused"), "{e}");
}

#[test]
fn tls_to_postgres_is_verify_full_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The dev PKI's server certificate names localhost and 127.0.0.1.
    let pki = pogo_vault::tls::generate_dev_pki(&dir.path().join("pki"), fixture::TRUST).unwrap();
    // PostgreSQL wants its key owned by its user and private.
    let key = dir.path().join("pg-server.key");
    std::fs::copy(&pki.server_key, &key).unwrap();
    let cert = dir.path().join("pg-server.pem");
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    if rustix::process::geteuid().is_root() {
        for f in [&key, &cert] {
            assert!(std::process::Command::new("chown").args(["postgres:postgres"]).arg(f).status().unwrap().success());
        }
    }
    let cluster = PgCluster::start(&[
        ("ssl", "on"),
        ("ssl_cert_file", cert.to_str().unwrap()),
        ("ssl_key_file", key.to_str().unwrap()),
    ]);
    cluster.create_database("vault");
    // Refuse every TCP connection that is not TLS.
    let hba = cluster.data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("hostnossl all all 0.0.0.0/0 reject\n{rules}")).unwrap();
    cluster.admin("postgres").query("SELECT pg_reload_conf()", &[]).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let mut o = cluster.options("vault");
    o.url = format!("postgresql://{}@localhost:{}/vault", common::pg::USER, cluster.port);
    o.ca_file = Some(pki.ca_cert.clone());
    let mut store = Store::connect_postgres(&o).unwrap();
    let rows = store.db().unwrap().query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 1, "the connection is TLS");

    // Another CA: the handshake fails, nothing falls back to plain text.
    let other = tempfile::tempdir().unwrap();
    let other_pki = pogo_vault::tls::generate_dev_pki(other.path(), "other.test").unwrap();
    o.ca_file = Some(other_pki.ca_cert.clone());
    let e = Store::connect_postgres(&o).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // The right server at a name its certificate does not hold.
    let mut wrong_name = cluster.options("vault");
    wrong_name.url = format!(
        "host=not-this-server.test hostaddr=127.0.0.1 port={} user={} dbname=vault",
        cluster.port,
        common::pg::USER
    );
    wrong_name.ca_file = Some(pki.ca_cert.clone());
    let e = Store::connect_postgres(&wrong_name).unwrap_err().to_string();
    assert!(e.contains("not valid for name") || e.contains("NotValidForName"), "{e}");

    // Without a CA, plain text: which this server refuses.
    let e = Store::connect_postgres(&cluster.options("vault")).unwrap_err().to_string();
    assert!(e.contains("no encryption") || e.contains("pg_hba"), "{e}");
}

#[test]
fn a_vault_copied_to_postgres_and_back_is_the_same_byte_for_byte_and_every_key_opens() {
    let cluster = PgCluster::start(&[]);
    cluster.create_database("moved");
    cluster.create_database("other");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("m.key");
    let db = dir.path().join("v.db");
    let n = 10_000;
    let ids: Vec<String> = (0..n).map(|i| format!("t{i:05}")).collect();
    {
        let vault = Vault::init(&db, &InitKey::GenerateKeyFile(key.clone()), Argon2Costs::default()).unwrap();
        exercise(&vault);
        fixture::add_bulk_tenants(&vault, &ids, 0, true);
    }
    let start = Instant::now();
    let mut from = Store::open(&db).unwrap();
    let mut to = Store::connect_postgres(&cluster.options("moved")).unwrap();
    let report = pogo_vault::store::copy::copy_vault(&mut from, &mut to).unwrap();
    let took = start.elapsed();
    assert_eq!(report.rows("tenants"), n + 4);
    assert_eq!(report.rows("sealed_secrets"), n + 4 + 2 + 1, "client keys, the vault's two keys, one subscription key");
    println!("copied to PostgreSQL in {took:?}: {report:#?}");

    // A second copy into the same database is refused, and changes nothing.
    let again = pogo_vault::store::copy::copy_vault(&mut from, &mut to).unwrap_err().to_string();
    assert!(again.contains("is not empty") && again.contains("vault_meta"), "{again}");
    assert_eq!(pogo_vault::store::copy::digest_vault(&mut to).unwrap(), report);
    drop(to);

    // Every tenant's key opens on PostgreSQL with the same master key.
    let vault = Vault::unlock_postgres(&cluster.options("moved"), &MasterKeySource::KeyFile(key.clone())).unwrap();
    let start = Instant::now();
    let mut opened = 0;
    let mut after: Option<String> = None;
    loop {
        let page = vault.list_tenants(after.as_deref(), 1000).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.tenant_id.to_string());
        for t in &page {
            vault.open_client_key(t).unwrap();
            opened += 1;
        }
    }
    assert_eq!(opened, n + 4);
    println!("opened {opened} client keys on PostgreSQL in {:?}", start.elapsed());
    drop(vault);

    // And back into a new SQLite file (the export a drill uses): the same rows, the same
    // digests, and the vault opens there too.
    let back = dir.path().join("back.db");
    let mut pg = Store::connect_postgres(&cluster.options("moved")).unwrap();
    let mut sqlite = Store::create(&back).unwrap();
    let returned = pogo_vault::store::copy::copy_vault(&mut pg, &mut sqlite).unwrap();
    assert_eq!(returned, report, "SQLite -> PostgreSQL -> SQLite changes no byte");
    drop(sqlite);
    let vault = Vault::unlock(&back, &MasterKeySource::KeyFile(key)).unwrap();
    let t = vault.tenant(&tid("t09999")).unwrap().unwrap();
    vault.open_client_key(&t).unwrap();

    // A copy that fails part-way leaves the target empty: the target refuses one tenant
    // (a check added for the test) after thousands of rows went in before it.
    let mut other = Store::connect_postgres(&cluster.options("other")).unwrap();
    cluster
        .admin("other")
        .batch_execute("ALTER TABLE tenants ADD CONSTRAINT test_refuses CHECK (tenant_id <> 't05000')")
        .unwrap();
    let mut src = Store::open(&db).unwrap();
    let e = pogo_vault::store::copy::copy_vault(&mut src, &mut other).unwrap_err().to_string();
    assert!(e.contains("constraint"), "{e}");
    let left = pogo_vault::store::copy::digest_vault(&mut other).unwrap();
    assert!(left.tables.iter().all(|t| t.rows == 0), "a failed copy leaves nothing: {left:?}");
    cluster.admin("other").batch_execute("ALTER TABLE tenants DROP CONSTRAINT test_refuses").unwrap();
    assert_eq!(pogo_vault::store::copy::copy_vault(&mut src, &mut other).unwrap(), report);
}

/// The next change the feed hands over within `within`, if any.
fn next_change(
    rx: &mut tokio::sync::broadcast::Receiver<pogo_vault::store::changes::Change>,
    within: Duration,
) -> Option<(pogo_vault::store::changes::Change, Duration)> {
    let start = Instant::now();
    while start.elapsed() < within {
        match rx.try_recv() {
            Ok(c) => return Some((c, start.elapsed())),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("{e:?}"),
        }
    }
    None
}

#[test]
fn a_change_through_one_vault_reaches_another_replicas_feed_within_a_second_and_a_rollback_never_does() {
    use pogo_vault::store::changes::{Change, ChangeFeed};
    let mut cluster = PgCluster::start(&[]);
    cluster.create_database("vault");
    let dir = tempfile::tempdir().unwrap();
    let a = Vault::init_postgres(
        &cluster.options("vault"),
        &InitKey::GenerateKeyFile(dir.path().join("m.key")),
        Argon2Costs::default(),
    )
    .unwrap();
    let feed = ChangeFeed::start(cluster.options("vault")).unwrap();
    let mut rx = feed.subscribe();
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(10)).map(|c| c.0),
        Some(Change::All),
        "listening begins with All"
    );
    assert!(feed.is_listening());

    a.add_tenant(&NewTenant::new(tid("acme"), Environment::Demo), &fixture::key(0), &UnauditedFixture).unwrap();
    assert_eq!(next_change(&mut rx, Duration::from_secs(1)).map(|c| c.0), Some(Change::Tenant("acme".into())));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        a.set_status(&tid("acme"), TenantStatus::Disabled, &UnauditedFixture).unwrap();
        let (c, took) = next_change(&mut rx, Duration::from_secs(1)).expect("a disable is seen within 1 s");
        assert_eq!(c, Change::Tenant("acme".into()));
        worst = worst.max(took);
        a.set_status(&tid("acme"), TenantStatus::Active, &UnauditedFixture).unwrap();
        assert_eq!(next_change(&mut rx, Duration::from_secs(1)).map(|c| c.0), Some(Change::Tenant("acme".into())));
    }
    println!("a status change reached the other replica's feed within {worst:?} (worst of 5)");

    // A change whose audit record is refused rolls back: nothing is announced.
    let refuse = |_: &pogo_vault::store::tenants::TenantRecord| Err(pogo_vault::vault::NotRecorded("refused".into()));
    assert!(a.set_status(&tid("acme"), TenantStatus::Disabled, &refuse).is_err());
    assert_eq!(next_change(&mut rx, Duration::from_millis(500)), None, "a rolled-back change is never announced");

    a.set_integration(&integration("d3d3d3d3e4e4e4e4f5f5f5f5a6a6a6a6"), &UnauditedFixture).unwrap();
    assert_eq!(next_change(&mut rx, Duration::from_secs(1)).map(|c| c.0), Some(Change::Integration("demo".into())));
    a.rotate_kek(&InitKey::GenerateKeyFile(dir.path().join("m2.key")), Argon2Costs::default(), &UnauditedFixture)
        .unwrap();
    assert_eq!(next_change(&mut rx, Duration::from_secs(1)).map(|c| c.0), Some(Change::MasterKey));

    // The server restarts: the feed connects again on its own and says All first.
    cluster.restart_immediate(&[]);
    let (c, took) = next_change(&mut rx, Duration::from_secs(15)).expect("the feed comes back");
    assert_eq!(c, Change::All);
    println!("the feed listened again {took:?} after the restart");
    drop(a);
    let b = Vault::unlock_postgres(&cluster.options("vault"), &MasterKeySource::KeyFile(dir.path().join("m2.key")))
        .unwrap();
    b.delete_tenant(&tid("acme"), &UnauditedFixture).unwrap();
    assert_eq!(next_change(&mut rx, Duration::from_secs(1)).map(|c| c.0), Some(Change::Tenant("acme".into())));
}

#[test]
fn registrations_acknowledged_before_the_primary_dies_are_all_on_the_promoted_synchronous_standby() {
    let t0 = Instant::now();
    let primary = PgCluster::start(&[]);
    primary.create_database("vault");
    let (standby, o) = primary.start_sync_standby("vault");
    println!("primary and synchronous standby ready after {:?}", t0.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(
        Vault::init_postgres(&o, &InitKey::GenerateKeyFile(dir.path().join("m.key")), Argon2Costs::default()).unwrap(),
    );

    // Two writers register tenants without pause; each keeps what was acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (vault, stop) = (vault.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut acked, mut unknown, mut refused) = (Vec::new(), 0, 0);
                let mut last_error: Option<Instant> = None;
                let mut back = None;
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let id = format!("w{w}-{i:06}");
                    match vault.add_tenant(
                        &NewTenant::new(tid(&id), Environment::Demo),
                        &fixture::key(i),
                        &UnauditedFixture,
                    ) {
                        Ok(_) => {
                            if let Some(at) = last_error.take() {
                                back.get_or_insert(at);
                            }
                            acked.push(id);
                        }
                        Err(VaultError::Store(pogo_vault::store::StoreError::CommitUnknown(_))) => unknown += 1,
                        Err(e) => {
                            assert!(e.is_transient(), "a failover is worth a retry: {e}");
                            refused += 1;
                            last_error.get_or_insert(Instant::now());
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                (acked, unknown, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    println!("killing the primary after {:?}", t0.elapsed());
    let killed_at = Instant::now();
    primary.kill9();
    std::thread::sleep(Duration::from_millis(500));
    standby.promote();
    let promoted_at = Instant::now();
    // Served again: the first registration acknowledged after the kill.
    let served_again = loop {
        let n = vault.count_tenants_by_status().map(|c| c.iter().map(|(_, n)| n).sum::<i64>());
        if n.is_ok() && vault.tenant(&tid("w0-000000")).is_ok() {
            break Instant::now();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "not served again within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    let (mut unknown, mut refused) = (0, 0);
    for w in writers {
        let (a, u, r) = w.join().unwrap();
        acked.extend(a);
        unknown += u;
        refused += r;
    }
    let on_standby: std::collections::HashSet<String> =
        standby.admin("vault").query("SELECT tenant_id FROM tenants", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !on_standby.contains(*id)).collect();
    println!(
        "failover: {} registrations acknowledged, {} lost, {unknown} unconfirmed commits, {refused} refused while \
         failing over; served again {:?} after the kill ({:?} after the promotion, which came 0.5 s after the kill)",
        acked.len(),
        lost.len(),
        served_again - killed_at,
        served_again.saturating_duration_since(promoted_at)
    );
    assert!(acked.len() > 20, "the writers ran");
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    assert!(
        acked.iter().any(|id| on_standby.contains(id))
            && vault.tenant(&tid(&acked[acked.len() - 1])).unwrap().is_some()
    );
    println!("checked after {:?}", t0.elapsed());
}
