//! What replicas on one PostgreSQL database share so that, towards PowerOffice Go, they act
//! as one vault (issue 16): one upstream budget per subscription, and one sealed token per
//! tenant with a lease on asking Go for the next one. PostgreSQL only (component `shared`,
//! `migrations/postgres/shared/`); a vault on SQLite is one process and keeps both in memory.
//!
//! - **The budget** (`shared_budget`): a GCRA bucket per environment, kept on the database's
//!   clock. [`Shared::reserve`] books the next slot in one statement under the row's lock and
//!   answers how long to wait for it (or, when that is longer than the caller may wait, how
//!   long it would have been, and books nothing). Slots are booked ahead, so the replicas
//!   together never start more than `burst` requests at once or more than `rate` a second
//!   after that, whatever their own clocks say. [`Shared::pause`] moves the bucket's pause
//!   (a 429 or quota 403 seen by one replica): every replica's next booking waits for it.
//! - **The token cache** (`shared_tokens`): the newest token per tenant, sealed by the vault
//!   (this module sees only the sealed blobs, the key version they are bound to, the keyed
//!   fingerprint and two times). A token minted with an older key version never replaces
//!   a newer one.
//! - **The lease** on asking Go for a tenant's token: a session-level advisory lock, so a
//!   replica that dies (or loses its connection) lets go of it at once, with no expiry to
//!   wait out.
//!
//! Calls run on this module's own connections (not the vault's): the budget and the token
//! cache on a pool of at most `pool_size`, the leases on one connection whose session holds
//! them. A caller waits at most the call timeout for a connection, then fails
//! `UNAVAILABLE`, so behind a silent server every caller fails within about two call
//! timeouts (the test: 8 callers, 1-s statement timeout, all failed within 6.0 to 12.0 s,
//! where a mutex made the last wait 48 s: `tests/postgres_store.rs`). A lease whose unlock
//! cannot run then is unlocked before the lease connection's next statement
//! (`unlock_later`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::StoreError;
use super::migrations::SHARED_POSTGRES;
use super::pg_conn::PgConn;
use super::pg_pool::{PgPool, Pooled};
use super::postgres::PostgresOptions;
use super::sql::{Row, Sql, Value};
use crate::crypto::Sealed;

/// The first key of the two-key advisory locks that are token leases (the second is the
/// hash of the tenant id). Two-key locks never meet the one-key locks of `pg_conn`.
const LEASE_CLASS: i32 = 0x706f_676f; // "pogo"

/// Go's answer to a booking: a slot, after waiting this long; or none within the wait
/// allowed, because the next would come after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    Booked { wait: Duration, paused_for: Option<Duration> },
    Refused { wait: Duration, paused_for: Option<Duration> },
}

/// A tenant's shared token as stored: sealed, with what chooses it. Its times are relative
/// to the database's clock (when stored, and when read), so replicas whose clocks differ
/// agree on how long it has left.
#[derive(Debug, Clone)]
pub struct SharedToken {
    pub key_version: i64,
    pub sealed: Sealed,
    /// The token's keyed fingerprint (what the audit log carries).
    pub fingerprint: String,
    /// How long until it expires.
    pub expires_in_ms: i64,
    /// How long until it should be refreshed.
    pub refresh_in_ms: i64,
}

/// The database's clock in Unix milliseconds, in SQL.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Bookings further ahead than this (or than `burst` intervals plus the caller's wait, if
/// that is longer) are pulled in, so a bucket left far in the future (a database clock
/// stepped back, a row from elsewhere) heals by itself. Far beyond anything a limiter books:
/// an hour, where waits are seconds to a minute.
const MAX_AHEAD: Duration = Duration::from_secs(3600);
/// The longest pause a row keeps: a day, beyond Go's longest Retry-After honoured (an hour)
/// and any configured subscription-key pause.
const MAX_PAUSE: Duration = Duration::from_secs(86_400);

pub struct Shared {
    /// The leases' connection (its session holds them), passed in turn: a caller waits at
    /// most the call timeout for it, then fails `UNAVAILABLE` (fail closed in bounded time).
    lease: Arc<PgPool>,
    /// Connections for the budget and the token cache (at most `pool_size`), so bookings
    /// and token reads of many flights run side by side and never wait behind a lease call.
    conn: Arc<PgPool>,
    /// Buckets whose row is known to exist.
    buckets: Mutex<HashSet<String>>,
    /// Tenants whose lease this process holds: a second flight of this process (after its
    /// cache was dropped mid-flight) waits as another replica would, instead of taking the
    /// session's re-entrant lock again; and a late release never lets go of a lease this
    /// process no longer holds.
    held: Mutex<HashSet<String>>,
    /// Leases let go of whose unlock could not run (the connection was busy or failed):
    /// unlocked by the next caller that gets the connection, before its own statement, so
    /// the session's lock count for a tenant never stays above zero with nobody holding it.
    unlock_later: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

fn from_micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

impl Shared {
    /// Connects (its own connection) and applies the component's migrations.
    pub fn connect(options: &PostgresOptions) -> Result<Shared, StoreError> {
        let conn = PgConn::connect(options, "shared", SHARED_POSTGRES)?;
        Ok(Shared {
            lease: PgPool::of_one(conn, options, "lease connection"),
            conn: PgPool::new(options, "shared", SHARED_POSTGRES, "shared-state connections"),
            buckets: Mutex::new(HashSet::new()),
            held: Mutex::new(HashSet::new()),
            unlock_later: Mutex::new(HashSet::new()),
        })
    }

    /// A connection for the budget or the token cache, waited for at most the call timeout.
    fn conn(&self) -> Result<Pooled, StoreError> {
        self.conn.get()
    }

    /// The leases' connection, waited for at most the call timeout; first the unlocks left
    /// over (see `unlock_later`).
    fn lease_conn(&self) -> Result<Pooled, StoreError> {
        let mut pooled = self.lease.get()?;
        let left: Vec<String> = self.unlock_later.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        for tenant in left {
            Self::unlock(pooled.conn()?, &tenant)?;
            self.unlock_later.lock().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
        }
        Ok(pooled)
    }

    fn unlock(conn: &mut PgConn, tenant: &str) -> Result<(), StoreError> {
        conn.query_opt(
            "SELECT pg_advisory_unlock($1::int4, hashtext($2))::int",
            &[Value::Int(i64::from(LEASE_CLASS)), tenant.into()],
        )?;
        Ok(())
    }

    fn ensure_bucket(&self, conn: &mut PgConn, bucket: &str) -> Result<(), StoreError> {
        if self.buckets.lock().unwrap_or_else(|p| p.into_inner()).contains(bucket) {
            return Ok(());
        }
        conn.execute(
            "INSERT INTO shared_budget (bucket, tat_us, paused_until_us) VALUES ($1, 0, 0)
             ON CONFLICT (bucket) DO NOTHING",
            &[bucket.into()],
        )?;
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).insert(bucket.to_owned());
        Ok(())
    }

    /// Books the next slot of `bucket` (one request per `interval`, bursts of `burst`) if it
    /// falls within `max_wait`, on the database's clock. A pause in force delays the slot.
    pub fn reserve(
        &self,
        bucket: &str,
        interval: Duration,
        burst: u32,
        max_wait: Duration,
    ) -> Result<Booking, StoreError> {
        let mut pooled = self.conn()?;
        let conn = pooled.conn()?;
        self.ensure_bucket(conn, bucket)?;
        let row = match Self::book(conn, bucket, interval, burst, max_wait)? {
            Some(row) => row,
            None => {
                // The row went away (a database restored without it): made again, once.
                self.buckets.lock().unwrap_or_else(|p| p.into_inner()).remove(bucket);
                self.ensure_bucket(conn, bucket)?;
                Self::book(conn, bucket, interval, burst, max_wait)?
                    .ok_or_else(|| StoreError::Corrupt(format!("shared_budget has no row for {bucket}")))?
            }
        };
        let wait = from_micros(row.get::<i64>(0)?);
        let paused = row.get::<i64>(1)?;
        let paused_for = (paused > 0).then(|| from_micros(paused));
        Ok(if row.get::<i64>(2)? > 0 {
            Booking::Booked { wait, paused_for }
        } else {
            Booking::Refused { wait, paused_for }
        })
    }

    /// One booking statement; `None` when the bucket has no row.
    fn book(
        conn: &mut PgConn,
        bucket: &str,
        interval: Duration,
        burst: u32,
        max_wait: Duration,
    ) -> Result<Option<Row>, StoreError> {
        // One statement: the row is locked from the read to the write, so two replicas
        // never book one slot. new_tat is GCRA's next theoretical arrival; the slot may go
        // `burst` intervals before it, but never before now or the end of a pause. What the
        // row holds is first pulled in to now + MAX_AHEAD (bookings) and now + MAX_PAUSE.
        conn.query_opt(
            "WITH raw AS (
                 SELECT tat_us, paused_until_us,
                        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us
                 FROM shared_budget WHERE bucket = $1 FOR UPDATE),
             cur AS (
                 SELECT LEAST(tat_us, now_us + GREATEST($5::bigint, $3::bigint + $4::bigint)) AS tat_us,
                        LEAST(paused_until_us, now_us + $6::bigint) AS paused_until_us, now_us
                 FROM raw),
             calc AS (
                 SELECT now_us, paused_until_us,
                        GREATEST(tat_us, now_us, paused_until_us) + $2::bigint AS new_tat,
                        GREATEST(GREATEST(tat_us, now_us, paused_until_us) + $2::bigint - $3::bigint,
                                 paused_until_us, now_us) - now_us AS wait_us
                 FROM cur),
             booked AS (
                 UPDATE shared_budget SET tat_us = calc.new_tat, paused_until_us = calc.paused_until_us
                 FROM calc
                 WHERE bucket = $1 AND calc.wait_us <= $4::bigint
                 RETURNING 1)
             SELECT wait_us, GREATEST(paused_until_us - now_us, 0), (SELECT count(*) FROM booked)
             FROM calc",
            &[
                bucket.into(),
                Value::Int(micros(interval)),
                Value::Int(micros(interval).saturating_mul(i64::from(burst.max(1)))),
                Value::Int(micros(max_wait)),
                Value::Int(micros(MAX_AHEAD)),
                Value::Int(micros(MAX_PAUSE)),
            ],
        )
    }

    /// Pauses `bucket` until `d` from now (database clock; at most [`MAX_PAUSE`]), unless it
    /// is paused longer.
    pub fn pause(&self, bucket: &str, d: Duration) -> Result<(), StoreError> {
        // An upsert: a row that went away is made again with the pause in it.
        self.conn()?.conn()?.execute(
            "INSERT INTO shared_budget (bucket, tat_us, paused_until_us)
             VALUES ($1, 0, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + LEAST($2::bigint, $3::bigint))
             ON CONFLICT (bucket) DO UPDATE
             SET paused_until_us = GREATEST(shared_budget.paused_until_us, excluded.paused_until_us)",
            &[bucket.into(), Value::Int(micros(d)), Value::Int(micros(MAX_PAUSE))],
        )?;
        Ok(())
    }

    /// The tenant's shared token, if one is stored.
    pub fn token(&self, tenant: &str) -> Result<Option<SharedToken>, StoreError> {
        let row = self.conn()?.conn()?.query_opt(
            &format!(
                "SELECT key_version, wrapped_dek, ciphertext, fingerprint,
                        expires_at - {DB_NOW_MS}, refresh_at - {DB_NOW_MS}
                 FROM shared_tokens WHERE tenant_id = $1"
            ),
            &[tenant.into()],
        )?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SharedToken {
            key_version: row.get(0)?,
            sealed: Sealed { wrapped_dek: row.get(1)?, ciphertext: row.get(2)? },
            fingerprint: row.get(3)?,
            expires_in_ms: row.get(4)?,
            refresh_in_ms: row.get(5)?,
        }))
    }

    /// Stores a newly minted token for `tenant`, only while the tenant is active with this
    /// key version and client key (`key_fingerprint`, as its row has it: a token minted for
    /// a tenant deleted or changed meanwhile is not shared; the tenant's row is share-locked,
    /// so a disable committing meanwhile is waited for and seen, and its own `drop_token`
    /// comes after), and unless a token of a newer
    /// key version, or of the same version expiring later, is there. Tokens expired a
    /// minute ago or more are removed on the way.
    pub fn put_token(
        &self,
        tenant: &str,
        t: &SharedToken,
        key_fingerprint: &str,
        minted_by: &str,
    ) -> Result<(), StoreError> {
        let mut pooled = self.conn()?;
        let conn = pooled.conn()?;
        conn.execute(
            &format!(
                "INSERT INTO shared_tokens (tenant_id, key_version, wrapped_dek, ciphertext, fingerprint,
                                            expires_at, refresh_at, minted_by, updated_at)
                 SELECT $1::text, $2::bigint, $3::bytea, $4::bytea, $5::text,
                        {DB_NOW_MS} + $6::bigint, {DB_NOW_MS} + $7::bigint, $8::text, {DB_NOW_MS}
                 WHERE EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1::text AND status = 'ACTIVE'
                                                       AND key_version = $2::bigint AND key_fingerprint = $9::text
                               FOR SHARE)
                 ON CONFLICT (tenant_id) DO UPDATE SET
                     key_version = excluded.key_version, wrapped_dek = excluded.wrapped_dek,
                     ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint,
                     expires_at = excluded.expires_at, refresh_at = excluded.refresh_at,
                     minted_by = excluded.minted_by, updated_at = excluded.updated_at
                 WHERE shared_tokens.key_version < excluded.key_version
                    OR (shared_tokens.key_version = excluded.key_version
                        AND shared_tokens.expires_at < excluded.expires_at)"
            ),
            &[
                tenant.into(),
                Value::Int(t.key_version),
                Value::Bytes(t.sealed.wrapped_dek.clone()),
                Value::Bytes(t.sealed.ciphertext.clone()),
                t.fingerprint.as_str().into(),
                Value::Int(t.expires_in_ms),
                Value::Int(t.refresh_in_ms),
                minted_by.into(),
                key_fingerprint.into(),
            ],
        )?;
        conn.execute(&format!("DELETE FROM shared_tokens WHERE expires_at < {DB_NOW_MS} - 60000"), &[])?;
        Ok(())
    }

    /// Destroys the tenant's shared token (its key, status or existence changed), or only the
    /// token with `fingerprint` (Go refused it, or it does not open here).
    pub fn drop_token(&self, tenant: &str, fingerprint: Option<&str>) -> Result<(), StoreError> {
        let mut pooled = self.conn()?;
        let conn = pooled.conn()?;
        match fingerprint {
            None => conn.execute("DELETE FROM shared_tokens WHERE tenant_id = $1", &[tenant.into()])?,
            Some(fp) => conn.execute(
                "DELETE FROM shared_tokens WHERE tenant_id = $1 AND fingerprint = $2",
                &[tenant.into(), fp.into()],
            )?,
        };
        Ok(())
    }

    /// Takes the lease on asking Go for `tenant`'s token, if nobody holds it (this process
    /// included): true if taken. Held until [`Shared::release`], or until this connection
    /// ends.
    pub fn try_lease(&self, tenant: &str) -> Result<bool, StoreError> {
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.contains(tenant) {
                return Ok(false);
            }
            // Claimed while asking, and the set not locked across the call (which may wait
            // for the connection): a second flight of this process for the tenant waits as
            // another replica would, and flights for other tenants do not queue behind it.
            held.insert(tenant.to_owned());
        }
        let taken = self.lease_conn().and_then(|mut pooled| {
            let row = pooled.conn()?.query_opt(
                "SELECT pg_try_advisory_lock($1::int4, hashtext($2))::int",
                &[Value::Int(i64::from(LEASE_CLASS)), tenant.into()],
            )?;
            Ok(row.map(|r| r.get::<i64>(0)).transpose()?.unwrap_or(0) == 1)
        });
        if !matches!(taken, Ok(true)) {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
        }
        taken
    }

    /// Lets go of a lease taken by [`Shared::try_lease`]. If the unlock cannot run now, it
    /// runs before the connection's next statement (an error is still returned, to log).
    pub fn release(&self, tenant: &str) -> Result<(), StoreError> {
        if !self.held.lock().unwrap_or_else(|p| p.into_inner()).contains(tenant) {
            return Ok(());
        }
        let done = self.lease_conn().and_then(|mut pooled| Self::unlock(pooled.conn()?, tenant));
        if done.is_err() {
            self.unlock_later.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.to_owned());
        }
        // Not held any more either way: a later try_lease on this session takes it anew
        // after the left-over unlock (which `conn` runs first).
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
        done
    }
}
