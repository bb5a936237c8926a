//! The processes of this PID namespace as `/proc` shows them: what the shim needs, as PID 1 of
//! its container, to kill what a plugin left behind (`child::spawn`) and to reap it (`reaper`).

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    pub parent: i32,
    pub group: i32,
}

/// Every process readable in `/proc` now (one that exits meanwhile is left out).
pub(crate) fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// The process `pid`, if it still exists.
pub(crate) fn process(pid: i32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse(pid, &stat)
}

/// The fields after the command name (which may hold spaces and parentheses, so they are counted
/// after its last `)`): state, parent, process group.
fn parse(pid: i32, stat: &str) -> Option<Process> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some(Process {
        pid,
        state,
        parent,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_after_the_command_name_whatever_it_holds() {
        assert_eq!(
            parse(42, "42 (sh) S 1 40 40 0 -1 4194560"),
            Some(Process {
                pid: 42,
                state: 'S',
                parent: 1,
                group: 40
            })
        );
        // A command name may contain spaces and parentheses: counting from the start would
        // misread it.
        assert_eq!(
            parse(42, "42 (a) b ) Z 7 13 13 0 -1").map(|p| (p.state, p.parent, p.group)),
            Some(('Z', 7, 13))
        );
        assert_eq!(parse(42, "42 (trunc"), None);
    }

    #[test]
    fn this_process_is_found_with_its_group() {
        let me = std::process::id() as i32;
        let found = processes().into_iter().find(|p| p.pid == me);
        assert_eq!(
            found.map(|p| p.group),
            Some(nix::unistd::getpgrp().as_raw())
        );
    }
}
