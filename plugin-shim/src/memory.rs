//! The container's memory cgroup, read to tell an out-of-memory kill from any other death of a
//! plugin process.
//!
//! When a plugin process outgrows the container's memory limit, the kernel's OOM killer sends it
//! SIGKILL: to the shim that looks like any other SIGKILL. The cgroup counts those kills
//! (`oom_kill` in `memory.events` on cgroup v2, in `memory.oom_control` on v1, kernel ≥ 4.13), so
//! a process that died by SIGKILL while the count rose was killed for memory. Where the kernel
//! kills the whole container instead (cgroup v2 with `memory.oom.group`, the kubelet's default
//! there), the shim dies with it and the pod's container status says `OOMKilled`.
//!
//! Inside a container `/sys/fs/cgroup` is the container's own cgroup (v1 mounts each controller
//! under it, v2 is one directory). Nothing here fails: an unreadable cgroup means "unknown".

use std::path::{Path, PathBuf};

/// Where the kernel shows the container its cgroups.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The files of one memory cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroup {
    /// The file with the `oom_kill <count>` line.
    events: PathBuf,
    /// The file with the limit in bytes (`max` when there is none on v2).
    limit: PathBuf,
    /// v2's `memory.oom.group` (none on v1).
    group: Option<PathBuf>,
}

impl MemoryCgroup {
    /// The container's memory cgroup under `root`: v2 when `root/memory.events` exists, else v1's
    /// `root/memory/`; `None` when neither is there (no cgroup to read, e.g. outside Linux
    /// containers with the memory controller).
    pub fn under(root: &Path) -> Option<Self> {
        if root.join("memory.events").is_file() {
            return Some(Self {
                events: root.join("memory.events"),
                limit: root.join("memory.max"),
                group: Some(root.join("memory.oom.group")),
            });
        }
        let v1 = root.join("memory");
        v1.join("memory.oom_control").is_file().then(|| Self {
            events: v1.join("memory.oom_control"),
            limit: v1.join("memory.limit_in_bytes"),
            group: None,
        })
    }

    /// The container's, at [`CGROUP_ROOT`].
    pub fn of_container() -> Option<Self> {
        Self::under(Path::new(CGROUP_ROOT))
    }

    /// Processes the kernel killed for memory in this cgroup so far.
    pub fn oom_kills(&self) -> Option<u64> {
        parse_oom_kills(&std::fs::read_to_string(&self.events).ok()?)
    }

    /// Whether the kernel kills the whole container at its limit (v2 `memory.oom.group` = 1, the
    /// kubelet's default there): the shim dies with the plugin, so it cannot tell the kill; the
    /// pod's container status says `OOMKilled` instead.
    pub fn kills_as_a_group(&self) -> bool {
        self.group
            .as_ref()
            .and_then(|g| std::fs::read_to_string(g).ok())
            .is_some_and(|text| text.trim() == "1")
    }

    /// The memory limit in bytes; `None` when there is none or it cannot be read.
    pub fn limit_bytes(&self) -> Option<u64> {
        parse_limit(&std::fs::read_to_string(&self.limit).ok()?)
    }
}

/// The `oom_kill` count of a `memory.events` (v2) or `memory.oom_control` (v1) file.
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// A limit file's bytes: `max` (v2) and v1's "unlimited" (the largest page-aligned i64) are no
/// limit.
fn parse_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < ((i64::MAX as u64) & !0xfff)).then_some(bytes)
}

/// `bytes` as Kubernetes writes a memory quantity when it is a whole number of a binary unit
/// (`64Mi`, `1Gi`), else in bytes — what a user finds in `spec.resources.limits.memory`.
pub fn quantity(bytes: u64) -> String {
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_count_is_read_from_either_cgroup_version() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kills(v1), Some(7));
        // A kernel before 4.13 has no count: unknown, never "no kill".
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_oom_kills("oom_group_kill 4\n"), None);
    }

    #[test]
    fn no_limit_is_none_and_a_limit_reads_as_the_quantity_a_user_wrote() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None, "v1's unlimited");
        assert_eq!(parse_limit("67108864\n"), Some(64 << 20));
        assert_eq!(quantity(64 << 20), "64Mi");
        assert_eq!(quantity(1 << 30), "1Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(1000), "1000");
    }

    #[test]
    fn the_cgroup_version_is_told_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MemoryCgroup::under(dir.path()), None);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/memory.oom_control"), "oom_kill 1\n").unwrap();
        std::fs::write(
            dir.path().join("memory/memory.limit_in_bytes"),
            "33554432\n",
        )
        .unwrap();
        let v1 = MemoryCgroup::under(dir.path()).unwrap();
        assert_eq!(
            (v1.oom_kills(), v1.limit_bytes()),
            (Some(1), Some(32 << 20))
        );
        assert!(!v1.kills_as_a_group(), "v1 kills one process");
        std::fs::write(dir.path().join("memory.events"), "oom_kill 0\n").unwrap();
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        let v2 = MemoryCgroup::under(dir.path()).unwrap();
        assert_eq!((v2.oom_kills(), v2.limit_bytes()), (Some(0), None));
        assert!(!v2.kills_as_a_group());
        std::fs::write(dir.path().join("memory.oom.group"), "1\n").unwrap();
        assert!(v2.kills_as_a_group());
    }
}
