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
    current: RwLock<Arc<Policy>>,
}

impl Authorizer {
    pub fn load(path: PathBuf) -> Result<Self, PolicyError> {
        let policy = Policy::load(&path)?;
        Ok(Self { path: Some(path), current: RwLock::new(Arc::new(policy)) })
    }

    pub fn from_policy(policy: Policy) -> Self {
        Self { path: None, current: RwLock::new(Arc::new(policy)) }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the policy file; on any error the old policy stays in force.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let Some(path) = &self.path else { return Ok(self.policy().grant_count()) };
        let policy = Policy::load(path)?;
        let n = policy.grant_count();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        Ok(n)
    }
}
