//! Reload on change: the server certificate and key, the client CA bundle, the CRLs and
//! the policy file are looked at every `every` (half a second by default), and what
//! changed is reloaded through the same path as SIGHUP (`reload.rs`: read and check,
//! record, then put in force; a refused file keeps the old in force, recorded, logged and
//! counted).
//!
//! Why polling the content and not inotify: cert-manager's and csi-driver-spiffe's volumes
//! (Kubernetes' atomic writer) never change a file in place. They write a new directory
//! and swap a `..data` symlink, so the watched path's inode never changes and a watch on it
//! never fires; a watch on the directory fires for every step of the swap. Reading a few
//! small files twice a second is cheap and sees every form of replacement the same way
//! (in place, rename over, symlink swap), with no new dependency.
//!
//! Debounce: a change is reloaded once its files read the same on two looks in a row, so a
//! certificate and its key replaced one after the other (two renames) are reloaded
//! together, not as a mismatched pair. A change is acted on once: a refused file is not
//! tried again until it changes again.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use super::reload::{Parts, Request};
use crate::tls::ServerTlsFiles;

/// What the files of a group hold now: a digest of each file's bytes (or of why it could
/// not be read), in order.
fn look(paths: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        // The key file too: its bytes are hashed and zeroized, never kept.
        match std::fs::read(p).map(Zeroizing::new) {
            Ok(bytes) => {
                h.update(b"\x01");
                h.update(Sha256::digest(&bytes[..]));
            }
            Err(e) => {
                h.update(b"\x00");
                h.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// One group of files reloaded together, and what was last acted on.
struct Group {
    parts: Parts,
    paths: Vec<PathBuf>,
    acted_on: [u8; 32],
    /// A change seen once, waiting for a second look to read the same.
    pending: Option<[u8; 32]>,
}

impl Group {
    fn new(parts: Parts, paths: Vec<PathBuf>) -> Group {
        let acted_on = look(&paths);
        Group { parts, paths, acted_on, pending: None }
    }

    /// The reload to ask for, if this look settles a change.
    fn step(&mut self) -> Option<Parts> {
        let now = look(&self.paths);
        if now == self.acted_on {
            self.pending = None;
            return None;
        }
        if self.pending == Some(now) {
            self.acted_on = now;
            self.pending = None;
            return Some(self.parts);
        }
        self.pending = Some(now);
        None
    }
}

/// Starts the watcher; it ends when the server stops.
pub(super) fn spawn(
    tls: ServerTlsFiles,
    policy: PathBuf,
    every: Duration,
    reload: mpsc::Sender<Request>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut tls_paths = vec![tls.cert, tls.key, tls.client_ca];
    tls_paths.extend(tls.crls);
    // What the server loaded at start is the baseline: a change after it is reloaded.
    let mut groups = vec![
        Group::new(Parts { policy: false, tls: true }, tls_paths),
        Group::new(Parts { policy: true, tls: false }, vec![policy]),
    ];
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            // File reads on the blocking pool: a slow volume never stalls a runtime thread.
            let Ok((back, due)) = tokio::task::spawn_blocking(move || {
                let due: Vec<Parts> = groups.iter_mut().filter_map(Group::step).collect();
                (groups, due)
            })
            .await
            else {
                return;
            };
            groups = back;
            for parts in due {
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

    #[test]
    fn a_change_is_acted_on_once_after_two_looks_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "one").unwrap();
        let mut g = Group::new(Parts::ALL, vec![a.clone(), b.clone()]);
        assert_eq!(g.step(), None, "nothing changed");
        std::fs::write(&a, "two").unwrap();
        assert_eq!(g.step(), None, "first look at a change: wait for a second");
        std::fs::write(&b, "two").unwrap();
        assert_eq!(g.step(), None, "still changing");
        assert_eq!(g.step(), Some(Parts::ALL), "settled: reload once");
        assert_eq!(g.step(), None, "and not again");
        std::fs::remove_file(&b).unwrap();
        assert_eq!(
            (g.step(), g.step()),
            (None, Some(Parts::ALL)),
            "a file gone is a change too (the reload refuses it)"
        );
        // A symlink swap (Kubernetes' atomic writer) is seen through the link.
        let (v1, v2, link) = (dir.path().join("v1"), dir.path().join("v2"), dir.path().join("cert.pem"));
        std::fs::write(&v1, "v1").unwrap();
        std::fs::write(&v2, "v2").unwrap();
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let mut g = Group::new(Parts::ALL, vec![link.clone()]);
        let tmp = dir.path().join("cert.tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_eq!((g.step(), g.step()), (None, Some(Parts::ALL)));
    }
}
