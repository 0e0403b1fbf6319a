//! Throwaway PostgreSQL clusters: `initdb` and `pg_ctl` from Debian's `postgresql` package
//! into a temp dir, on a loopback port and a socket in that dir, run as the `postgres` user
//! when the tests run as root (PostgreSQL refuses root). No system service, nothing shared
//! between tests; `Drop` stops the cluster (immediate mode) and the dir goes with it.
//!
//! The cluster's default collation is ICU's English (linguistic: `a` < `B` < `c`), not
//! byte order, so a column that must sort byte by byte shows it only if it says `"C"`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pogo_vault::store::PostgresOptions;

/// The superuser the tests connect as (password auth over TCP).
pub const USER: &str = "pogo";

pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    password: String,
    bin: PathBuf,
}

/// Debian's PostgreSQL binaries (the newest version installed).
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: install Debian's postgresql package (.ci/run does when it is missing)")
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a PostgreSQL program, as `postgres` when we are root.
fn run_pg(bin: &Path, program: &str, args: &[&str]) -> Output {
    let exe = bin.join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).env_remove("PGDATA").output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn give_to_postgres(path: &Path) {
    if is_root() {
        let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).output().unwrap();
        assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgCluster {
    /// A fresh cluster with `settings` (`-c name=value`) added to the defaults.
    pub fn start(settings: &[(&str, &str)]) -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // Everything PostgreSQL writes lives in `pg/` (its own, when we are root).
        let home = dir.path().join("pg");
        std::fs::create_dir(&home).unwrap();
        std::fs::create_dir(home.join("sock")).unwrap();
        give_to_postgres(&home);
        let data = home.join("data");
        let password = format!("pw-{:016x}", rand_u64());
        let pwfile = dir.path().join("initdb-pw");
        std::fs::write(&pwfile, &password).unwrap();
        give_to_postgres(&pwfile);
        let out = run_pg(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                &format!("--pwfile={}", pwfile.display()),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--locale-provider=icu",
                "--icu-locale=en-US",
            ],
        );
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&pwfile).unwrap();
        let mut cluster = PgCluster { dir, data, port: 0, password, bin };
        cluster.start_server(settings);
        cluster
    }

    fn start_server(&mut self, settings: &[(&str, &str)]) {
        for _ in 0..3 {
            self.port = free_port();
            if self.pg_ctl_start(settings) {
                return;
            }
            eprintln!("pg_ctl start failed (port {}): {}", self.port, self.log_tail());
        }
        panic!("PostgreSQL did not start: {}", self.log_tail());
    }

    /// `pg_ctl start` on `self.port` with `settings`; whether it started.
    fn pg_ctl_start(&self, settings: &[(&str, &str)]) -> bool {
        let sock = self.dir.path().join("pg/sock");
        let mut opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, sock.display());
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let log = self.dir.path().join("pg/server.log");
        let (data, log) = (self.data.to_str().unwrap(), log.to_str().unwrap());
        let out = run_pg(&self.bin, "pg_ctl", &["-D", data, "-l", log, "-w", "-t", "30", "-o", &opts, "start"]);
        out.status.success()
    }

    /// The server log's last lines (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("pg/server.log")).unwrap_or_default();
        log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Stops the server at once (as a crash would: no checkpoint), then starts it again on
    /// the same port.
    pub fn restart_immediate(&mut self, settings: &[(&str, &str)]) {
        self.stop_immediate();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.pg_ctl_start(settings) {
            assert!(Instant::now() < deadline, "PostgreSQL did not start again: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`) on a port of its own,
    /// started and caught up. Make it synchronous on the primary with
    /// `synchronous_standby_names`.
    pub fn start_standby(&self, settings: &[(&str, &str)]) -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join("pg");
        std::fs::create_dir(&home).unwrap();
        std::fs::create_dir(home.join("sock")).unwrap();
        give_to_postgres(&home);
        let data = home.join("data");
        let port = self.port.to_string();
        let pw = format!("PGPASSWORD={}", self.password);
        let exe = self.bin.join("pg_basebackup");
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            USER,
            "-D",
            data.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ];
        let out = if is_root() {
            Command::new("runuser").args(["-u", "postgres", "--", "env", &pw]).arg(&exe).args(args).output().unwrap()
        } else {
            Command::new(&exe).env("PGPASSWORD", &self.password).args(args).output().unwrap()
        };
        assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
        let mut standby = PgCluster { dir, data, port: 0, password: self.password.clone(), bin: self.bin.clone() };
        standby.start_server(settings);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .admin("postgres")
            .query("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'", &[])
            .unwrap()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the standby did not start streaming: {}", standby.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
        standby
    }

    /// A streaming standby ([`PgCluster::start_standby`]) made synchronous on this primary
    /// (`synchronous_standby_names = '*'`), returned once it is; and the options of database
    /// `db` on a two-host URL (this primary, then the standby) with
    /// `target_session_attrs=read-write`, 1-s connect and 2-s statement timeouts.
    pub fn start_sync_standby(&self, db: &str) -> (PgCluster, PostgresOptions) {
        let standby = self.start_standby(&[]);
        let mut admin = self.admin("postgres");
        admin.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
        admin.query("SELECT pg_reload_conf()", &[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin.query("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'", &[]).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the standby did not become synchronous");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut o = self.options(db);
        o.url = format!(
            "postgresql://{USER}@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.port, standby.port
        );
        o.connect_timeout = Duration::from_secs(1);
        o.statement_timeout = Duration::from_secs(2);
        (standby, o)
    }

    /// Kills the server's postmaster with SIGKILL (as a machine that dies would end it).
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        // Its backends too, at the same moment: nothing gets to finish what it was doing.
        let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
        assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        let out = run_pg(&self.bin, "pg_ctl", &["-D", self.data.to_str().unwrap(), "-w", "-t", "30", "promote"]);
        assert!(out.status.success(), "pg_ctl promote: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn stop_immediate(&self) {
        let _ = run_pg(&self.bin, "pg_ctl", &["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    /// A file holding the password, as `storage.postgres.password_file` takes it.
    pub fn password_file(&self) -> PathBuf {
        let p = self.dir.path().join("vault-pg-password");
        if !p.exists() {
            std::fs::write(&p, format!("{}\n", self.password)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        p
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgresql://pogo@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The vault's options for database `db` (password from the file; no TLS: loopback).
    pub fn options(&self, db: &str) -> PostgresOptions {
        let mut o = PostgresOptions::new(self.url(db));
        o.password_file = Some(self.password_file());
        o
    }

    /// A superuser connection to `db` (for set-up and for looking at what the vault wrote).
    pub fn admin(&self, db: &str) -> postgres::Client {
        let conn = format!("host=127.0.0.1 port={} user={USER} password={} dbname={db}", self.port, self.password);
        postgres::Client::connect(&conn, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {db}: {e}\n{}", self.log_tail()))
    }

    /// Creates an empty database `name`.
    pub fn create_database(&self, name: &str) {
        self.admin("postgres").batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}
