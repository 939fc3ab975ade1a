//! The processes the harness starts, and nothing left behind: each runs in its own process
//! group (nginx's and HAProxy's workers with it) and is stopped when its guard is dropped —
//! also on a panic — or when the harness gets SIGINT or SIGTERM.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The process groups alive now, for the signal handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A started process, stopped (with its process group) on drop.
pub struct Guard {
    child: Child,
}

/// Start `cmd` in a process group of its own, guarded.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Guard> {
    let child = cmd.process_group(0).spawn()?;
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child.id());
    Ok(Guard { child })
}

impl Guard {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM to the group, SIGKILL after the grace period; reaps the process.
    fn stop(&mut self) {
        if self.try_wait().is_none() {
            signal_group(self.id(), Signal::SIGTERM);
            let deadline = Instant::now() + GRACE;
            while self.try_wait().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of the group (workers of a leader that exited) goes too.
        signal_group(self.id(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
        let id = self.id();
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != id);
    }
}

fn signal_group(pgid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), sig);
}

/// Whether the process is gone or a zombie waiting to be reaped.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Stop every live process group: SIGTERM, SIGKILL to those still running after the grace.
fn stop_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pgid in &live {
        signal_group(*pgid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while !live.iter().all(|p| exited(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pgid in &live {
        signal_group(*pgid, Signal::SIGKILL);
    }
}

/// On SIGINT or SIGTERM, stop what the harness started and exit (130 / 143, as a shell
/// reports a process killed by them). Returns once the handler is in place.
pub fn stop_on_signals() {
    let (ready, installed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready.send(false);
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = ready.send(false);
                    return;
                };
                let _ = ready.send(true);
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                eprintln!("remora-bench: interrupted; stopping the processes it started");
                stop_all();
                std::process::exit(code);
            });
        });
    if spawned.is_err() || !installed.recv().unwrap_or(false) {
        eprintln!("remora-bench: no signal handler; an interrupted run may leave processes behind");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_stops_its_process_group() {
        // A shell that starts another process in its group, then waits.
        let pid_file =
            std::env::temp_dir().join(format!("remora-bench-guard-{}.pid", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
        ]);
        let guard = spawn(&mut cmd).unwrap();
        let leader = guard.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild: u32 = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "the shell did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(LIVE.lock().unwrap().contains(&leader));
        drop(guard);
        assert!(!LIVE.lock().unwrap().contains(&leader));
        // The grandchild is not ours to reap: it is gone, or a zombie of init's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !exited(grandchild) {
            assert!(
                Instant::now() < deadline,
                "the group's other process survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(pid_file);
    }
}
