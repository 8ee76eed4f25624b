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

/// First and one-past-last port handed out: below Linux's ephemeral range
/// (32768–60999 by default). A port taken from that range and bound by a
/// node process only a second later can meanwhile become the local port
/// of some outgoing connection (the tests open hundreds), and the node
/// then fails to start with "address in use"; ports below it are never
/// chosen by the kernel.
const PORTS: (u16, u16) = (20_000, 32_000);

/// `n` ports free on 127.0.0.1, never handed out twice in this process:
/// taken in turn from [`PORTS`], starting at a place chosen by the process
/// id and the clock (test binaries running at once start apart), each
/// checked by binding it.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.1 - PORTS.0);
    if NEXT.load(Ordering::SeqCst) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = std::process::id().wrapping_mul(7919).wrapping_add(nanos) % span;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            return out;
        }
        let port = PORTS.0 + (NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    panic!("fewer than {n} free ports in {PORTS:?}");
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
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
