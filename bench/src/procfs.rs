//! Process measurements from /proc: CPU time (utime + stime) and resident memory, summed over a
//! process and its descendants (nginx and HAProxy run workers as child processes).

use std::collections::HashSet;

/// Clock ticks per second for /proc/PID/stat (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out
}

/// The process and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut seen = HashSet::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            stack.extend(children(p));
        }
    }
    let mut v: Vec<u32> = seen.into_iter().collect();
    v.sort_unstable();
    v
}

/// CPU seconds (user + system) used so far by the process tree.
pub fn cpu_seconds(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Fields after the command name (which may contain spaces) start after ") ".
            let rest = &stat[stat.rfind(") ")? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SEC)
        })
        .sum()
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size of the process tree, bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_kb(p, "VmRSS:"))
        .sum::<u64>()
        * 1024
}

/// Peak resident set size (VmHWM) of the process tree, bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_kb(p, "VmHWM:"))
        .sum::<u64>()
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me) > 0);
        assert!(peak_rss_bytes(me) >= rss_bytes(me) / 2);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(me) >= 0.0);
        assert!(tree(me).contains(&me));
    }
}
