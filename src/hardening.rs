//! Process hardening for the long-running commands (`serve`, `dev`).
//!
//! A core dump of the vault holds the master key and whatever client keys were open at the
//! time, written to disk in the clear, where whoever reads crash dumps reads them: so the
//! process turns core dumps off (`RLIMIT_CORE` 0) and marks itself not dumpable
//! (`PR_SET_DUMPABLE` 0, which also stops other processes of the same user from attaching
//! a debugger or reading its memory through `/proc`). And it does not serve as root: a
//! compromise of the server would then be a compromise of the host.

use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// Turns core dumps off and makes the process not dumpable. An error names what failed.
pub fn disable_core_dumps() -> Result<(), String> {
    rustix::process::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })
        .map_err(|e| format!("cannot turn core dumps off (RLIMIT_CORE): {e}"))?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot mark the process not dumpable (PR_SET_DUMPABLE): {e}"))?;
    Ok(())
}

/// Whether the process runs with the real or effective uid of root.
pub fn is_root() -> bool {
    rustix::process::getuid().is_root() || rustix::process::geteuid().is_root()
}

/// Whether this process is dumpable and its core size limit, for tests and `status`.
pub fn core_dump_state() -> (bool, Option<u64>) {
    let dumpable = !matches!(rustix::process::dumpable_behavior(), Ok(DumpableBehavior::NotDumpable));
    (dumpable, rustix::process::getrlimit(Resource::Core).current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_off_after_hardening() {
        disable_core_dumps().unwrap();
        assert_eq!(core_dump_state(), (false, Some(0)));
    }
}
