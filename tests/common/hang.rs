//! Hangs become failures with a diagnosis: a command run with a deadline ([`output_within`]), a child waited for
//! with one ([`wait_within`]), a whole test watched by a [`Watchdog`]; when time runs out they report what the
//! processes involved were doing ([`report`]: each thread's state, kernel wait channel and kernel stack, and the
//! user stacks through `gdb` when it is installed) and fail the test, instead of holding CI until its own limit.
//!
//! The limits are far above what any test needs on a loaded machine; they exist only to turn a deadlock into a
//! red test with the evidence attached.
#![allow(clippy::disallowed_methods)] // /proc is read by path

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a single CLI call may take before the test reports a hang (`KILN_TEST_CALL_LIMIT`, seconds).
pub fn call_limit() -> Duration {
    let secs = std::env::var("KILN_TEST_CALL_LIMIT").ok().and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(300))
}

/// Runs `cmd` to completion (its stdout and stderr captured) unless `limit` passes first: then the command and
/// every process in `watch` (e.g. the daemon it talks to) are reported, the command is killed, and this panics
/// with the report.
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str, watch: &[u32]) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: wait: {e}")),
        Err(_) => {
            let mut text = format!("{what}: no answer after {limit:?}\n");
            for p in std::iter::once(&pid).chain(watch) {
                text.push_str(&report(*p));
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("{text}");
        }
    }
}

/// Waits for `child` to exit unless `limit` passes first: then it is reported and this panics (the child is
/// left as it is, for whoever looks next).
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st,
            Ok(None) => {}
            Err(e) => panic!("{what}: wait: {e}"),
        }
        if Instant::now() >= deadline {
            panic!("{what}: still running after {limit:?}\n{}", report(child.id()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What process `pid` and its threads are doing: state, wait channel and kernel stack of each thread (from
/// `/proc`), then the user stacks of every thread from `gdb -batch` when `gdb` is installed (at most 60 s).
pub fn report(pid: u32) -> String {
    let proc = format!("/proc/{pid}");
    let mut text = format!("--- process {pid} ({}) ---\n", super::daemon::comm(pid));
    let cmdline = std::fs::read(format!("{proc}/cmdline")).unwrap_or_default();
    text.push_str(&format!("cmdline: {}\n", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    let mut tids: Vec<u32> = std::fs::read_dir(format!("{proc}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    tids.sort_unstable();
    if tids.is_empty() {
        text.push_str("(gone)\n");
        return text;
    }
    for tid in &tids {
        let t = format!("{proc}/task/{tid}");
        let read = |f: &str| std::fs::read_to_string(format!("{t}/{f}")).unwrap_or_default();
        let status = read("status");
        let field = |name: &str| format!("{name} {}", super::status_field(&status, name).unwrap_or("?"));
        text.push_str(&format!("thread {tid} ({}) {} wchan {}\n", read("comm").trim(), field("State:"), read("wchan")));
        // Signals pending (thread, process), blocked, ignored and caught: a stop signal that never acts shows here.
        let masks: Vec<String> = ["SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:"].map(field).to_vec();
        text.push_str(&format!("    {}\n", masks.join(" ")));
        for line in read("stack").lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    if super::which("gdb").is_some() {
        let gdb = Command::new("timeout")
            .args(["60", "gdb", "-nx", "-batch", "-ex", "set pagination off", "-ex", "thread apply all bt 30", "-p"])
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .output();
        match gdb {
            Ok(o) => {
                text.push_str("gdb:\n");
                text.push_str(&String::from_utf8_lossy(&o.stdout));
            }
            Err(e) => text.push_str(&format!("gdb: {e}\n")),
        }
    }
    text
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // pid (comm) state ppid …: comm may hold spaces and parentheses, so split after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Watches a test: unless dropped within `limit`, it prints a report of this process and of its children (the
/// daemons and tools the test started) to stderr and exits the test process with status 101, so that the test
/// binary fails (with the evidence in its output) instead of running until CI's own limit.
pub struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    pub fn start(what: &str, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, what) = (done.clone(), what.to_owned());
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let me = std::process::id();
            let mut text = format!("WATCHDOG: {what} still running after {limit:?}\n");
            for p in std::iter::once(me).chain(children(me)) {
                text.push_str(&report(p));
            }
            eprintln!("{text}");
            std::process::exit(101);
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}
