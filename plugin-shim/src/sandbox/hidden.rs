//! One directory out of the plugin's reach (the shim's TLS identity: its private key is mounted
//! readable by the pod's user, which the plugin shares), with a Landlock ruleset under which the
//! plugin process can still do everything else it could.
//!
//! Landlock only grants: once a ruleset handles an access right, only the hierarchies a rule
//! names keep it. So the rules name everything *beside* the hidden directory. For each ancestor
//! of it, from `/` down, every entry but the next ancestor gets all rights; the ancestor itself
//! gets only `ReadDir`, because a right granted on a directory holds beneath it, so anything more
//! on an ancestor would reach the hidden directory too. What the plugin loses:
//!
//! - opening anything beneath the hidden directory (listing it stays possible: that is the
//!   `ReadDir` of its ancestors; the names of the files are no secret);
//! - creating, renaming or removing entries directly in one of its ancestors: in a pod they are
//!   on the read-only root file system, where that fails already (EROFS, checked first).
//!
//! Symbolic links among the entries are skipped: a rule follows them, so a link in the plugin's
//! image (`/x -> /var/run/airlock/tls`) would grant the hidden directory; what a link points to
//! has its own rule under its real path. Landlock judges the real path of what is opened, so no
//! link, `..` or `/proc/self/root` detour reaches the hidden files.
//!
//! Best effort: on a kernel without Landlock, or with only its first ABI (which would also forbid
//! renaming files between directories, a change a plugin would notice), nothing is enforced and
//! the plugin runs as before; the shim says which at startup ([`enforceable`]).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr,
};
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

/// The Landlock ABI whose file system rights the ruleset handles: the newest one tested (Linux
/// 6.15). A right only a newer ABI defines stays unhandled, so allowed everywhere, until it has
/// been tested here: an untested restriction could break plugins.
const TESTED_ABI: ABI = ABI::V7;

/// Why the directory cannot be hidden.
#[derive(Debug, thiserror::Error)]
pub enum HideError {
    #[error(
        "cannot resolve {}, the directory to hide from the plugin: {source}; it must exist (it is the shim's --tls-dir)",
        dir.display()
    )]
    Resolve { dir: PathBuf, source: io::Error },
    #[error("refusing to hide / from the plugin: --tls-dir must be a directory of its own")]
    Root,
    #[error(
        "cannot list {}, which holds the directory hidden from the plugin, to keep its other entries within the plugin's reach: {source}; make it readable by the shim's user",
        dir.display()
    )]
    List { dir: PathBuf, source: io::Error },
    #[error(
        "cannot open {} to keep it within the plugin's reach: {source}",
        path.display()
    )]
    Open { path: PathBuf, source: io::Error },
    #[error("building the Landlock ruleset that hides the TLS directory: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

/// Whether this kernel enforces the ruleset that hides `dir`, built in full (so that a directory
/// that cannot be hidden is reported at startup, not at every start of the plugin). Changes
/// nothing: the ruleset is not applied.
pub fn enforceable(dir: &Path) -> Result<bool, HideError> {
    Ok(ruleset(dir)?.is_some())
}

/// Hides `dir` from this process and everything it starts (irreversible). `Ok(false)`: this
/// kernel cannot, nothing changed.
pub fn hide(dir: &Path) -> Result<bool, HideError> {
    match ruleset(dir)? {
        Some(ruleset) => {
            ruleset.restrict_self()?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The rights handled, whatever the kernel: the caller learns from [`supported`] whether they are
/// enforced.
fn handled() -> Result<Ruleset, HideError> {
    Ok(Ruleset::default()
        // Renames between directories (AccessFs::Refer, ABI 2) must keep working: on a kernel
        // without it, the whole ruleset is dropped rather than enforced with that change.
        .set_compatibility(CompatLevel::SoftRequirement)
        .handle_access(AccessFs::from_all(ABI::V2))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TESTED_ABI))?)
}

/// Whether this kernel enforces [`handled`]: without Landlock (or with ABI 1) the created ruleset
/// has no file descriptor.
fn supported() -> Result<bool, HideError> {
    Ok(Option::<OwnedFd>::from(handled()?.create()?).is_some())
}

/// The ruleset that hides `dir`, or `None` where the kernel cannot enforce it.
fn ruleset(dir: &Path) -> Result<Option<RulesetCreated>, HideError> {
    let dir = std::fs::canonicalize(dir).map_err(|source| HideError::Resolve {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !supported()? {
        // Nothing would be enforced: no need to look at the file system.
        return Ok(None);
    }
    let mut ruleset = handled()?.create()?;
    let mut child = dir.as_path();
    let mut ancestor = child.parent().ok_or(HideError::Root)?;
    loop {
        ruleset = allow_beside(ruleset, ancestor, child)?;
        child = ancestor;
        match child.parent() {
            Some(parent) => ancestor = parent,
            None => break,
        }
    }
    Ok(Some(ruleset))
}

/// `ruleset` with `ReadDir` on `ancestor` and every right on each of its entries but `child`.
fn allow_beside(
    ruleset: RulesetCreated,
    ancestor: &Path,
    child: &Path,
) -> Result<RulesetCreated, HideError> {
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let dir_fd =
        open(ancestor, flags | OFlag::O_DIRECTORY, Mode::empty()).map_err(|e| HideError::Open {
            path: ancestor.to_path_buf(),
            source: e.into(),
        })?;
    let entries = std::fs::read_dir(ancestor).map_err(|source| HideError::List {
        dir: ancestor.to_path_buf(),
        source,
    })?;
    let mut ruleset = ruleset;
    for entry in entries {
        let entry = entry.map_err(|source| HideError::List {
            dir: ancestor.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        if child.file_name() == Some(name.as_os_str()) {
            continue;
        }
        let path = ancestor.join(&name);
        // Relative to the ancestor's descriptor and not following a link in the last step: the
        // rule is for this very entry, whatever replaces it later.
        let fd = match openat(&dir_fd, name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            // Gone since it was listed: nothing left to grant.
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => {
                return Err(HideError::Open {
                    path,
                    source: e.into(),
                });
            }
        };
        // fstat works on an O_PATH descriptor and describes the entry itself.
        let kind = fd
            .metadata()
            .map_err(|source| HideError::Open { path, source })?
            .file_type();
        let access = if kind.is_symlink() {
            continue;
        } else if kind.is_dir() {
            AccessFs::from_all(TESTED_ABI)
        } else {
            // A file, socket, fifo or device: the rights that apply to it.
            AccessFs::from_file(TESTED_ABI)
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    Ok(ruleset.add_rule(PathBeneath::new(dir_fd, AccessFs::ReadDir))?)
}
