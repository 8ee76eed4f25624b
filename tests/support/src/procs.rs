//! Node processes: ports, spawning, killing, and their logs when a test
//! fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process, killed (-9) and reaped when dropped.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The runtime of a test that drives processes from a plain thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub fn spawn(bin: &str, cfg: &Path) -> Proc {
    spawn_args(bin, cfg, &[])
}

/// Starts a node; its log goes (appended, across restarts) to the file
/// beside its config with the extension `log`.
pub fn spawn_args(bin: &str, cfg: &Path, extra: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.with_extension("log"))
        .unwrap();
    Proc(Some(
        Command::new(bin)
            .args(["node", "--config"])
            .arg(cfg)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

/// Prints the end of every node log of `cfgs` when the test is failing:
/// the processes' side of the story for CI's output.
pub struct LogsOnFailure<'a>(pub &'a [std::path::PathBuf]);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for cfg in self.0 {
            let log = cfg.with_extension("log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {} ---", log.display());
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }
}

pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
