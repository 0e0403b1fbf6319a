//! Authorization: who the caller is (from the verified client certificate, see `tls`),
//! what the policy grants them, and which role each method needs.
//!
//! Architecture invariant: deny by default. A method missing from [`methods::METHODS`] is
//! refused; a caller not allowed on a tenant gets the same `PERMISSION_DENIED` whether or
//! not the tenant exists (the check comes before any lookup).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub mod methods;
pub mod policy;

pub use methods::Requirement;
pub use policy::{Policy, PolicyError, Role};

/// The live policy, swapped whole on reload (SIGHUP); readers never see half a policy.
#[derive(Debug)]
pub struct Authorizer {
    path: Option<PathBuf>,
    /// The policy in force and its generation (bumped by every install).
    current: RwLock<(Arc<Policy>, u64)>,
}

impl Authorizer {
    pub fn load(path: PathBuf) -> Result<Self, PolicyError> {
        let policy = Policy::load(&path)?;
        Ok(Self { path: Some(path), current: RwLock::new((Arc::new(policy), 0)) })
    }

    pub fn from_policy(policy: Policy) -> Self {
        Self { path: None, current: RwLock::new((Arc::new(policy), 0)) }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The policy in force and its generation: a number that changes with every install, so
    /// what was derived from one policy (a caller's request budget) is re-derived after a
    /// reload.
    pub fn current(&self) -> (Arc<Policy>, u64) {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads and checks the policy file without putting it in force (a reload is
    /// recorded in the audit log first, then [`Authorizer::install`]ed). `None`: this
    /// authorizer has no file.
    pub fn read_file(&self) -> Result<Option<Policy>, PolicyError> {
        self.path.as_ref().map(|p| Policy::load(p)).transpose()
    }

    /// Puts a policy in force; returns its number of grants.
    pub fn install(&self, policy: Policy) -> usize {
        let n = policy.grant_count();
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = (Arc::new(policy), current.1 + 1);
        n
    }
}
