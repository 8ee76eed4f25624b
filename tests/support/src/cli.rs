//! Running the `hourcell` binary in process tests: a command and its
//! output, its JSON, and a node started from a config. The binary's path
//! (`env!("CARGO_BIN_EXE_hourcell")`) is known only inside the CLI
//! package's tests, so they pass it in.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Plaintext on loopback, every role for requests without credentials, and
/// a retention limit that generated towns of any date stay inside.
pub const TEST_SECURITY: &str =
    "\n[security]\ninsecure = true\nanonymous_roles = [\"all\"]\nretention_days = 36500\n";

pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run hourcell")
}

/// Runs `bin args` and returns its stdout; fails the test, showing both
/// streams, if it did not succeed.
pub fn ok(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "hourcell {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin node` on 127.0.0.1:`port` with `extra` config lines and
/// [`TEST_SECURITY`], its stderr to `log` (or nowhere), and waits until it
/// answers.
pub fn start_node_with(
    bin: &str,
    dir: &Path,
    port: u16,
    extra: &str,
    log: Option<&Path>,
) -> Killed {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nblock_cache_mb = 16\n{extra}\n{TEST_SECURITY}",
            dir.join("data")
        ),
    )
    .unwrap();
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
        None => Stdio::null(),
    };
    let child = Command::new(bin)
        .args(["node", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let node = Killed(child);
    let server = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run(bin, &["status", "--server", &server]).status.success() {
        assert!(Instant::now() < deadline, "node did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

/// [`start_node_with`] logging warnings only, nowhere.
pub fn start_node(bin: &str, dir: &Path, port: u16) -> Killed {
    start_node_with(bin, dir, port, "log = \"warn\"", None)
}
