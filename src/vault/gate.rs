//! Audit before effect: the gate every vault write calls, with the change it is about to
//! commit, while its transaction is still open (see the `vault` module invariants).

use super::error::NotRecorded;

/// Called by every write with the change it is about to commit, inside its transaction:
/// `Ok` only once the change's audit record is durable. See the module invariants.
/// Closures `Fn(&T) -> Result<(), NotRecorded>` are gates.
pub trait CommitGate<T: ?Sized>: Sync {
    fn record(&self, change: &T) -> Result<(), NotRecorded>;
}

impl<T: ?Sized, F: Fn(&T) -> Result<(), NotRecorded> + Sync> CommitGate<T> for F {
    fn record(&self, change: &T) -> Result<(), NotRecorded> {
        self(change)
    }
}

/// How a write receives its gate.
pub type Gate<'a, T> = &'a dyn CommitGate<T>;

/// The gate of test fixtures and benchmark set-up only: records nothing. No path a user
/// can reach uses it (`tests/architecture.rs` checks that `src/` never names it).
#[derive(Debug, Clone, Copy)]
pub struct UnauditedFixture;

impl<T: ?Sized> CommitGate<T> for UnauditedFixture {
    fn record(&self, _: &T) -> Result<(), NotRecorded> {
        Ok(())
    }
}
