//! A witness destination ([`Sink`]): delivers one checkpoint or says why not; and the file
//! sink, one checkpoint JSON per line, opened `O_APPEND` and `fsync`ed after every line.
//! The delivery threads that call sinks are in `witness/mod.rs`; the syslog sink in `syslog`.

use std::io::Write;
use std::path::PathBuf;

use super::super::chain::Checkpoint;

/// A destination: delivers one checkpoint or says why not.
pub(super) trait Sink: Send {
    fn name(&self) -> &'static str;
    fn deliver(&mut self, cp: &Checkpoint) -> Result<(), String>;
}

pub(super) struct FileSink {
    pub(super) path: PathBuf,
    pub(super) file: Option<std::fs::File>,
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn deliver(&mut self, cp: &Checkpoint) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut line = cp.to_json();
        line.push('\n');
        let result = (|| {
            if self.file.is_none() {
                let f = std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(&self.path)?;
                self.file = Some(f);
            }
            let Some(f) = self.file.as_mut() else { unreachable!("opened above") };
            // One write of the whole line: with O_APPEND it lands at the end in one piece.
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })();
        result.map_err(|e| {
            // Reopened on the next attempt (the volume may have been remounted).
            self.file = None;
            format!("{}: {e}", self.path.display())
        })
    }
}
