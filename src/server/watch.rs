//! Reload on change: the server certificate and key, the client CA bundle, the CRLs and
//! the policy file are looked at every `every` (half a second by default), and what
//! changed is reloaded through the same path as SIGHUP (`reload.rs`: read and check,
//! record, then put in force; a refused file keeps the old in force, recorded, logged and
//! counted).
//!
//! Why polling and not inotify: cert-manager's and csi-driver-spiffe's volumes
//! (Kubernetes' atomic writer) never change a file in place. They write a new directory
//! and swap a `..data` symlink, so the watched path's inode never changes and a watch on it
//! never fires; a watch on the directory fires for every step of the swap. A look is a
//! `stat` of each file through its links (device, inode, size, mtime, mode, owner); a file
//! whose `stat` changed is read and hashed, so every form of replacement (in place, rename
//! over, symlink swap, `chmod`) is seen the same way, cheaply, with no new dependency.
//!
//! One record of what is in force, [`Files`], shared with the reload loop: every reload,
//! whatever asked for it (SIGHUP, `RunningServer::reload`, this watcher), notes the look of
//! the files it reads before it reads them, so a change reloaded by SIGHUP is not reloaded
//! again by the watcher. The first look is taken before the server loads the files at
//! start, so a change made while it starts is reloaded.
//!
//! Debounce: a change is reloaded once its files look the same on two looks in a row, so a
//! certificate and its key replaced one after the other (two renames within a look) are
//! reloaded together, not as a mismatched pair. A refused change is not tried again until
//! the files change, or [`RETRY_REFUSED`] later (a certificate refused as not yet valid,
//! because the clocks differ, goes into force once it is).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use super::reload_request::{Parts, Request};
use crate::tls::ServerTlsFiles;

/// A refused change is tried again after this, if the files did not change meanwhile.
pub(super) const RETRY_REFUSED: Duration = Duration::from_secs(30);

type Look = [u8; 32];

/// What `stat` says of a file, through its links.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Meta {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    mode: u32,
    uid: u32,
}

/// One group of files reloaded together.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Tls = 0,
    Policy = 1,
}

impl Group {
    const BOTH: [Group; 2] = [Group::Tls, Group::Policy];

    fn parts(self) -> Parts {
        match self {
            Group::Tls => Parts::TLS,
            Group::Policy => Parts::POLICY,
        }
    }

    fn of(parts: Parts) -> impl Iterator<Item = Group> {
        Group::BOTH.into_iter().filter(move |g| if *g == Group::Tls { parts.tls } else { parts.policy })
    }
}

#[derive(Default)]
struct Known {
    /// Per group: the look of the files the last reload read (or the server loaded).
    in_force: [Look; 2],
    /// Per group: when a reload of the files as they look now was refused.
    refused: [Option<Instant>; 2],
    /// Content digests by path, valid while the file's `stat` is unchanged.
    hashes: HashMap<PathBuf, (Meta, Look)>,
}

/// The watched files and what is known of them (see the module doc).
pub(super) struct Files {
    paths: [Vec<PathBuf>; 2],
    known: Mutex<Known>,
}

impl Files {
    /// The files of `tls` and `policy`, looked at now: call before the server loads them.
    /// `tls`: `None` when the certificates come from elsewhere (the SPIFFE Workload API).
    pub(super) fn new(tls: Option<&ServerTlsFiles>, policy: &std::path::Path) -> Arc<Files> {
        let mut tls_paths = Vec::new();
        if let Some(tls) = tls {
            tls_paths.extend([tls.cert.clone(), tls.key.clone(), tls.client_ca.clone()]);
            tls_paths.extend(tls.crls.iter().cloned());
        }
        let files = Arc::new(Files { paths: [tls_paths, vec![policy.to_owned()]], known: Mutex::default() });
        files.loading(Parts::ALL);
        files
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload of `parts` is about to read them: what they look like now is what will be
    /// in force (or refused).
    pub(super) fn loading(&self, parts: Parts) {
        let mut k = self.lock();
        for g in Group::of(parts) {
            let now = look(&self.paths[g as usize], &mut k.hashes);
            k.in_force[g as usize] = now;
            k.refused[g as usize] = None;
        }
    }

    /// The reload of `parts` refused what it read.
    pub(super) fn refused(&self, parts: Parts) {
        let mut k = self.lock();
        for g in Group::of(parts) {
            k.refused[g as usize] = Some(Instant::now());
        }
    }

    /// One look at group `g`: whether a reload is due, given the change seen at the last
    /// look (`pending`, updated).
    fn due(&self, g: Group, pending: &mut Option<Look>) -> bool {
        let mut k = self.lock();
        let now = look(&self.paths[g as usize], &mut k.hashes);
        if now == k.in_force[g as usize] {
            *pending = None;
            // Unchanged since a refusal: try again once in a while (clock skew).
            return k.refused[g as usize].is_some_and(|at| at.elapsed() >= RETRY_REFUSED);
        }
        if *pending == Some(now) {
            *pending = None;
            return true;
        }
        *pending = Some(now);
        false
    }
}

/// What the files of a group hold now: per path, the digest of its bytes (read again only
/// when its `stat` changed), or why it could not be read.
fn look(paths: &[PathBuf], hashes: &mut HashMap<PathBuf, (Meta, Look)>) -> Look {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        let meta = std::fs::metadata(p).map(|m| Meta {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            mode: m.mode(),
            uid: m.uid(),
        });
        let content = meta.and_then(|meta| match hashes.get(p) {
            Some((seen, digest)) if *seen == meta => Ok((meta, *digest)),
            // The key file too: its bytes are hashed and zeroized, never kept.
            _ => std::fs::read(p).map(Zeroizing::new).map(|bytes| (meta, Sha256::digest(&bytes[..]).into())),
        });
        match content {
            Ok((meta, digest)) => {
                hashes.insert(p.clone(), (meta, digest));
                h.update(b"\x01");
                h.update(digest);
                h.update(meta.mode.to_le_bytes());
                h.update(meta.uid.to_le_bytes());
            }
            Err(e) => {
                hashes.remove(p);
                h.update(b"\x00");
                h.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// Starts the watcher; it ends when the server stops.
pub(super) fn spawn(
    files: Arc<Files>,
    every: Duration,
    reload: mpsc::Sender<Request>,
    mut stopping: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: [Option<Look>; 2] = [None, None];
        loop {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            // File reads on the blocking pool: a slow volume never stalls a runtime thread.
            let f = files.clone();
            let mut p = pending;
            let looked = tokio::task::spawn_blocking(move || {
                let due: Vec<Group> = Group::BOTH.into_iter().filter(|g| f.due(*g, &mut p[*g as usize])).collect();
                (due, p)
            })
            .await;
            let due = match looked {
                Ok((due, p)) => {
                    pending = p;
                    due
                }
                Err(e) => {
                    tracing::error!("looking at the certificate and policy files failed ({e}); trying again");
                    continue;
                }
            };
            for g in due {
                let parts = g.parts();
                tracing::info!(policy = parts.policy, certificates = parts.tls, "files changed on disk: reloading");
                let (request, done) = Request::new(parts);
                if reload.send(request).await.is_err() {
                    return;
                }
                let _ = done.await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn files(dir: &std::path::Path) -> (Arc<Files>, PathBuf, PathBuf) {
        let (cert, key, ca, policy) =
            (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"), dir.join("policy.toml"));
        for p in [&cert, &key, &ca, &policy] {
            std::fs::write(p, "one").unwrap();
        }
        let tls = ServerTlsFiles { cert: cert.clone(), key: key.clone(), client_ca: ca, crls: Vec::new() };
        (Files::new(Some(&tls), &policy), cert, key)
    }

    #[test]
    fn a_change_is_due_once_after_two_looks_agree_and_a_reload_from_elsewhere_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (f, cert, key) = files(dir.path());
        let mut p = None;
        assert!(!f.due(Group::Tls, &mut p), "nothing changed");
        std::fs::write(&cert, "two").unwrap();
        assert!(!f.due(Group::Tls, &mut p), "first look at a change: wait for a second");
        std::fs::write(&key, "two").unwrap();
        assert!(!f.due(Group::Tls, &mut p), "still changing");
        assert!(f.due(Group::Tls, &mut p), "settled");
        f.loading(Group::Tls.parts());
        assert!(!f.due(Group::Tls, &mut p) && !f.due(Group::Tls, &mut p), "reloaded: not again");
        assert!(!f.due(Group::Policy, &mut p), "the policy did not change");
        // A change that SIGHUP reloaded first is not reloaded again by the watcher.
        std::fs::write(&cert, "three").unwrap();
        assert!(!f.due(Group::Tls, &mut p));
        f.loading(Parts::ALL);
        assert!(!f.due(Group::Tls, &mut p) && !f.due(Group::Tls, &mut p));
        // A file gone is a change too (the reload refuses it), and so is a mode change.
        std::fs::remove_file(&key).unwrap();
        assert_eq!((f.due(Group::Tls, &mut p), f.due(Group::Tls, &mut p)), (false, true));
        f.loading(Group::Tls.parts());
        f.refused(Group::Tls.parts());
        assert!(!f.due(Group::Tls, &mut p), "refused: not tried again at once");
        std::fs::write(&key, "two").unwrap();
        f.loading(Group::Tls.parts());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!((f.due(Group::Tls, &mut p), f.due(Group::Tls, &mut p)), (false, true), "chmod");
    }

    #[test]
    fn a_symlink_swap_is_seen_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("v1"), "v1").unwrap();
        std::fs::write(d.join("v2"), "v2").unwrap();
        std::os::unix::fs::symlink(d.join("v1"), d.join("cert.pem")).unwrap();
        let mut hashes = HashMap::new();
        let before = look(&[d.join("cert.pem")], &mut hashes);
        std::os::unix::fs::symlink(d.join("v2"), d.join("cert.tmp")).unwrap();
        std::fs::rename(d.join("cert.tmp"), d.join("cert.pem")).unwrap();
        assert_ne!(look(&[d.join("cert.pem")], &mut hashes), before);
    }
}
