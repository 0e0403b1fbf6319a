//! Who runs an operator command, and how its change is recorded before it takes effect.
//!
//! Attribution comes from the operating system, not from `$USER` (which anyone sets): the
//! process's real uid (from `/proc/self/status`) and that uid's name in `/etc/passwd`.
//! `SUDO_USER` is recorded when present, marked as what sudo says (sudo sets it; a user
//! running as themselves can set it too, so it is a claim, not a proof).
//!
//! The commit gate: [`Operator::gate`] appends the change's record to the audit database
//! and waits until it is durable (one transaction with a signed checkpoint), while the
//! vault's transaction is still open; the vault commits only then (`vault` module docs).

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::audit::{Action, AuditLog, AuditRecord, Outcome};
use crate::vault::NotRecorded;

/// The operator running this command, as the audit log names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// `cli:uid=1000(alice)`; `cli:uid=0(root) sudo_user=bob` under sudo.
    pub caller: String,
}

impl Operator {
    /// The operator of this process.
    pub fn current() -> Operator {
        let uid = real_uid();
        let name = uid.and_then(|u| user_name(Path::new("/etc/passwd"), u));
        let sudo = std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty());
        Operator { caller: describe(uid, name.as_deref(), sudo.as_deref()) }
    }

    /// A record of `action` by this operator.
    pub fn record(&self, action: Action, outcome: Outcome, detail: impl Into<String>) -> AuditRecord {
        AuditRecord::new(action, outcome)
            .caller(self.caller.clone(), "")
            .detail(detail)
            .request(crate::server::new_request_id(), "local")
    }

    /// A commit gate that appends the records `make` builds from the change to the audit
    /// database at `audit_db` (signed with `key`), durably, before the vault commits.
    pub fn gate<'a, T: ?Sized>(
        &'a self,
        audit_db: PathBuf,
        key: &'a SigningKey,
        make: impl Fn(&Operator, &T) -> Vec<AuditRecord> + Sync + 'a,
    ) -> impl Fn(&T) -> Result<(), NotRecorded> + Sync + 'a {
        move |change: &T| {
            for rec in make(self, change) {
                AuditLog::append_blocking_once(&audit_db, key, rec).map_err(|e| NotRecorded(e.to_string()))?;
            }
            Ok(())
        }
    }
}

/// The caller text for a uid, its name and sudo's claim.
fn describe(uid: Option<u32>, name: Option<&str>, sudo_user: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$')).take(64).collect()
    };
    let mut out = match (uid, name) {
        (Some(u), Some(n)) => format!("cli:uid={u}({})", clean(n)),
        (Some(u), None) => format!("cli:uid={u}"),
        (None, _) => "cli:uid=unknown".to_owned(),
    };
    if let Some(s) = sudo_user {
        out.push_str(&format!(" sudo_user={}", clean(s)));
    }
    out
}

/// The real uid of this process (first field of `Uid:` in `/proc/self/status`).
fn real_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_real_uid(&status)
}

fn parse_real_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The name of `uid` in a passwd file.
fn user_name(passwd: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let uid_field = f.nth(1)?;
        (uid_field.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_uid_is_the_first_uid_field() {
        let status = "Name:\tpogo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_real_uid(status), Some(1000));
        assert_eq!(parse_real_uid("Name: x\n"), None);
    }

    #[test]
    fn user_name_comes_from_the_passwd_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(&p, "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        assert_eq!(user_name(&p, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(&p, 0).as_deref(), Some("root"));
        assert_eq!(user_name(&p, 4242), None);
    }

    #[test]
    fn describe_marks_sudo_and_strips_odd_characters() {
        assert_eq!(describe(Some(0), Some("root"), Some("bob")), "cli:uid=0(root) sudo_user=bob");
        assert_eq!(describe(Some(1000), None, None), "cli:uid=1000");
        assert_eq!(describe(Some(1), Some("evil\ncaller"), Some("a b")), "cli:uid=1(evilcaller) sudo_user=ab");
    }

    #[test]
    fn the_current_operator_is_named_by_uid_not_by_user_variable() {
        let op = Operator::current();
        assert!(op.caller.starts_with("cli:uid="), "{}", op.caller);
    }
}
