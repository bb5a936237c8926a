//! The files the commands read and write, and the one error for a file that cannot be: it names
//! the file and what to check. Output files are written so that a reader never sees half of one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {what} {}: {source}; check the path", path.display())]
    Read {
        /// What the file holds, e.g. "the bundle".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}; check that its directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    fn read(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FileError::Read { what, path, source }
    }

    fn write(path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FileError::Write { path, source }
    }
}

/// The bytes of `path`, which holds `what` (e.g. "the bundle").
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(FileError::read(what, path))
}

/// The text of `path`, which holds `what` (e.g. "the public key").
pub fn read_to_string(path: &Path, what: &'static str) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(FileError::read(what, path))
}

/// Writes `bytes` to a temporary file beside `path`, gives it `mode` and renames it into place:
/// a reader never sees half a file, and a failed write leaves an existing file as it was.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    replace(path, bytes, mode).map_err(FileError::write(path))
}

fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes `path` if it is there; whether it was.
pub fn remove_if_present(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError::write(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
