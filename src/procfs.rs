//! What Linux says about a process (`/proc/<pid>/...`): its CPU time, memory and file
//! descriptors, for a node's own metrics and for `pkd bench` watching local nodes; how
//! much a data directory holds; and the open-file limit.

use std::path::Path;

/// The kernel's clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User and system CPU seconds the process has used, if it exists.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

/// utime and stime from a `/proc/<pid>/stat` line. The command name is in parentheses
/// and may hold spaces, so fields are counted after the last `)`.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 0, utime 11, stime 12.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// Resident and peak resident bytes of the process, if it exists.
pub fn resident_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_resident_bytes(&status)
}

/// `VmRSS` and `VmHWM` from a `/proc/<pid>/status` text.
pub fn parse_resident_bytes(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kib| kib * 1024))
    };
    let resident = field("VmRSS:")?;
    Some((resident, field("VmHWM:").unwrap_or(resident)))
}

/// Open file descriptors of the process, and its limit, if it exists.
pub fn file_descriptors(pid: u32) -> Option<(u64, u64)> {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    Some((open, parse_max_open_files(&limits)?))
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    limits.lines().find(|line| line.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

/// Bytes in the files under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => dir_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Raises this process's open-files limit to its hard limit, for runs with thousands of
/// connections; the local nodes it starts inherit it. Returns the soft limit in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_lines_are_read() {
        let stat = "4242 (pkd serve (1)) S 1 4242 4242 0 -1 4194560 9 0 0 0 250 50 0 0 20 0 12 0 1 2 3";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            524288               1048576              files\n";
        assert_eq!(parse_max_open_files(limits), Some(524_288));
        let status = "Name:\tpkd\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_resident_bytes(status), Some((1024 * 1024, 2048 * 1024)));
        assert_eq!(parse_resident_bytes("Name:\tpkd\n"), None);
    }

    #[test]
    fn this_process_is_visible_and_its_limit_can_be_raised() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(resident_bytes(pid).is_some_and(|(resident, peak)| resident > 0 && peak >= resident));
        assert!(raise_open_files_limit() > 0);
        assert!(file_descriptors(pid).is_some_and(|(open, max)| open > 0 && max >= open));
    }
}
