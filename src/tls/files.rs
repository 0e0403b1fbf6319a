//! Reading and writing PEM files: certificates, private keys (mode 0600 enforced), CRLs.
//!
//! Invariant: a private key is read only from a file that group and others cannot access, and
//! written only into a file created with mode 0600 (never widened, even briefly). Raw key
//! bytes are held in `Zeroizing` buffers while they are parsed.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::TlsError;

/// Mode of every private key file written here.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates and CRLs: public, readable by all.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

pub(crate) fn show(path: &Path) -> String {
    path.display().to_string()
}

fn read_err(path: &Path, e: &std::io::Error) -> TlsError {
    TlsError::Read { path: show(path), reason: e.to_string() }
}

fn write_err(path: &Path, e: &std::io::Error) -> TlsError {
    TlsError::Write { path: show(path), reason: e.to_string() }
}

/// Refuses an open file that group or others may read or write.
fn check_private(path: &Path, file: &File) -> Result<(), TlsError> {
    let mode = file.metadata().map_err(|e| read_err(path, &e))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::LoosePermissions { path: show(path), mode });
    }
    Ok(())
}

fn read_all(path: &Path, mut file: File) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let mut buf = Zeroizing::new(Vec::new());
    file.read_to_end(&mut buf).map_err(|e| read_err(path, &e))?;
    Ok(buf)
}

/// Reads a public file (certificates, CRLs).
pub(crate) fn read_public(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| read_err(path, &e))
}

/// Reads a private key file after checking its mode (on the opened file, so the file checked
/// is the file read).
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let file = File::open(path).map_err(|e| read_err(path, &e))?;
    check_private(path, &file)?;
    read_all(path, file)
}

/// Reads a PEM file of either kind: when it holds a private key, its mode must be private.
pub(crate) fn read_private_or_public(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let file = File::open(path).map_err(|e| read_err(path, &e))?;
    let meta_file = file.try_clone().map_err(|e| read_err(path, &e))?;
    let bytes = read_all(path, file)?;
    if bytes.windows(b"PRIVATE KEY".len()).any(|w| w == b"PRIVATE KEY") {
        check_private(path, &meta_file)?;
    }
    Ok(bytes)
}

/// All certificates of a PEM file, in file order (leaf first for a chain). At least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_public(path)?;
    parse_certs(path, &bytes)
}

pub(crate) fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Malformed { path: show(path), what: "PEM certificate file", reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: show(path) });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, SEC1 or PKCS#1), after the mode check.
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_private(path)?;
    parse_private_key(path, &bytes)
}

pub(crate) fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The pemfile error names the PEM section at fault, never its content.
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| TlsError::Malformed { path: show(path), what: "PEM private key file", reason: e.to_string() })?
        .ok_or_else(|| TlsError::NoPrivateKey { path: show(path) })
}

/// Writes a new file with `mode` set at creation; refuses to replace an existing file.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::AlreadyExists { path: show(path) }
        } else {
            write_err(path, &e)
        }
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| write_err(path, &e))
}

/// Replaces `path` atomically (write a temporary file beside it, then rename), so a reader
/// sees the old or the new content, never a torn file. For CRLs, which are re-issued in place.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let name = path
        .file_name()
        .ok_or_else(|| TlsError::Write { path: show(path), reason: "the path has no file name".to_owned() })?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix)
        .map_err(|e| TlsError::Write { path: show(path), reason: format!("random source: {e}") })?;
    let tmp_name = format!(".{}.{:016x}.tmp", name.to_string_lossy(), u64::from_le_bytes(suffix));
    let tmp = path.with_file_name(tmp_name);
    write_new(&tmp, bytes, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        write_err(path, &e)
    })
}

/// Refuses to go on when any of `paths` exists, before anything is written.
pub(crate) fn refuse_existing<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<(), TlsError> {
    for p in paths {
        let p = p.as_ref();
        // symlink_metadata: a dangling symlink counts as existing too.
        if p.symlink_metadata().is_ok() {
            return Err(TlsError::AlreadyExists { path: show(p) });
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700; leaves an existing directory alone.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| write_err(dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_new(&p, b"one", KEY_MODE).unwrap();
        let err = write_new(&p, b"two", KEY_MODE).unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"one");
    }

    #[test]
    fn replace_swaps_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crl.pem");
        replace(&p, b"one", PUBLIC_MODE).unwrap();
        replace(&p, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_holding_a_private_key_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_new(&p, b"-----BEGIN PRIVATE KEY-----\n", 0o640).unwrap();
        let err = read_private_or_public(&p).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let cert = dir.path().join("c.pem");
        write_new(&cert, b"-----BEGIN CERTIFICATE-----\n", 0o644).unwrap();
        assert!(read_private_or_public(&cert).is_ok());
    }
}
