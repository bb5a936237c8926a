//! `airlock-shim install`: the init container copies the shim into a shared volume, from which
//! the plugin container runs it (the plugin's image need not contain it).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::RunError;

/// Copies the running executable (`/proc/self/exe`) to `dest` with mode 0755, atomically
/// (written beside it, then renamed). Returns the path written.
pub fn install(dest: &Path) -> Result<PathBuf, RunError> {
    let dest = if dest.is_dir() {
        dest.join("airlock-shim")
    } else {
        dest.to_path_buf()
    };
    let err = |source| RunError::Install {
        path: dest.clone(),
        source,
    };
    let name = dest.file_name().ok_or_else(|| {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = dest.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // /proc/self/exe still opens when the file on disk was replaced since the shim started.
    fs::copy("/proc/self/exe", &tmp).map_err(err)?;
    let done = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .and_then(|()| fs::rename(&tmp, &dest));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_copies_an_executable_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = install(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("airlock-shim"));
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(meta.len(), fs::metadata("/proc/self/exe").unwrap().len());
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
