//! The `hourcell` binary as scripts use it: flags from the environment,
//! distinct exit codes, and JSON log lines.

use std::path::Path;
use std::process::{Command, Output};

use hourcell_test_support::cli::{self, json, Killed};
use hourcell_test_support::procs::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

fn hourcell(args: &[&str]) -> Output {
    cli::run(BIN, args)
}

fn ok(args: &[&str]) -> String {
    cli::ok(BIN, args)
}

fn start_node(dir: &Path, port: u16) -> Killed {
    cli::start_node(BIN, dir, port)
}

/// Every client flag may come from its environment variable instead, and
/// `--help` says which.
#[test]
fn client_flags_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _node = start_node(dir.path(), port);
    let s = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hourcell"));
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // HOURCELL_SERVER instead of --server; the status as JSON.
    let out = run(&["status", "--format", "json"], &[("HOURCELL_SERVER", &s)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(st["slice_level"].as_u64(), Some(16), "{st}");
    assert!(
        st["persons"].is_u64() && st["audit_head"]["seq"].is_u64(),
        "{st}"
    );
    // A token is sent, by flag or variable: this node takes none, and says so.
    for (args, env) in [
        (
            vec!["status", "--server", &s, "--token", "not-a-token"],
            vec![],
        ),
        (
            vec!["status", "--server", &s],
            vec![("HOURCELL_TOKEN", "not-a-token")],
        ),
    ] {
        let out = run(&args, &env);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not accept bearer tokens"), "{err}");
    }
    let help = ok(&["query", "occupancy", "--help"]);
    for v in [
        "HOURCELL_SERVER",
        "HOURCELL_TOKEN",
        "HOURCELL_CA",
        "HOURCELL_CERT",
        "HOURCELL_KEY",
    ] {
        assert!(help.contains(v), "{v} missing from --help");
    }
    assert!(!help.contains("not-a-token"), "token values are not shown");
}

/// Each query kind is a subcommand whose `--help` lists its own flags only,
/// besides the shared ones (server, credentials, output).
#[test]
fn each_query_kind_helps_with_its_own_flags() {
    let kinds = ok(&["query", "--help"]);
    for k in [
        "who-was-at",
        "where-was",
        "occupancy",
        "no-activity-since",
        "grid",
    ] {
        assert!(kinds.contains(k), "{k} missing from `query --help`");
        let help = ok(&["query", k, "--help"]);
        for shared in ["--server", "--format", "--out", "HOURCELL_TOKEN"] {
            assert!(help.contains(shared), "{shared} missing from {k} --help");
        }
    }
    let where_was = ok(&["query", "where-was", "--help"]);
    assert!(where_was.contains("--person") && where_was.contains("--purpose"));
    for other in ["--rect", "--circle", "--area", "--level", "--since"] {
        assert!(!where_was.contains(other), "{other} in where-was --help");
    }
    let who = ok(&["query", "who-was-at", "--help"]);
    assert!(who.contains("--rect") && who.contains("--polygon") && who.contains("--case"));
    assert!(!who.contains("--person") && !who.contains("--level"));
    let grid = ok(&["query", "grid", "--help"]);
    assert!(grid.contains("--level") && grid.contains("--hourly"));
    assert!(!grid.contains("--area") && !grid.contains("--purpose"));
    let nas = ok(&["query", "no-activity-since", "--help"]);
    assert!(nas.contains("--since") && nas.contains("--local-rect") && nas.contains("--as-of"));
    assert!(!nas.contains("--from"));
    // A kind that is not one: usage, naming the kinds.
    let out = hourcell(&["query", "who-is-where"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("who-was-at"));
}

/// Scripts can tell a typo, a down server, a refusal and a bad request
/// apart by the exit code (README, "Exit codes"; verification failures, 6,
/// in `audit_verify_catches_edited_deleted_and_reordered_records`).
#[test]
fn exit_codes_tell_usage_unavailable_denied_and_invalid_apart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _node = start_node(dir.path(), port);
    let s = format!("http://127.0.0.1:{port}");
    let code = |args: &[&str]| hourcell(args).status.code();
    assert_eq!(code(&["status", "--server", &s]), Some(0));
    let v = json(&ok(&[
        "retention",
        "apply",
        "--format",
        "json",
        "--server",
        &s,
    ]));
    assert!(
        v["cutoff"].is_string() && v["person_days_removed"].is_u64(),
        "{v}"
    );
    assert_eq!(code(&["status", "--no-such-flag"]), Some(2), "usage");
    // Kinds, states and outcomes are checked, and the allowed ones named.
    let out = hourcell(&["tasks", "list", "--state", "closed", "--server", &s]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open, in_progress, resolved"), "{err}");
    assert_eq!(
        code(&["query", "where-was", "--circle", "1,2,3", "--server", &s]),
        Some(2),
        "flags that do not apply"
    );
    let down = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(code(&["status", "--server", &down]), Some(3), "unavailable");
    assert_eq!(
        code(&["status", "--server", &s, "--token", "not-a-token"]),
        Some(4),
        "denied"
    );
    assert_eq!(
        code(&[
            "query",
            "occupancy",
            "--area",
            "NO-SUCH-AREA",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-11-02T00:00:00Z",
            "--server",
            &s,
        ]),
        Some(5),
        "invalid"
    );
}

/// `log_format = "json"`: one JSON object per line, and one access line per
/// RPC naming who called what, its status and latency, never the person
/// asked about.
#[test]
fn access_lines_are_json_and_name_no_person() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("node.log");
    let node = cli::start_node_with(
        BIN,
        dir.path(),
        port,
        "log = \"info\"\nlog_format = \"json\"",
        Some(&log),
    );
    let s = format!("http://127.0.0.1:{port}");
    ok(&[
        "query",
        "where-was",
        "--person",
        "4242424242",
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-11-02T00:00:00Z",
        "--purpose",
        "generated check",
        "--case",
        "L-1",
        "--server",
        &s,
    ]);
    let bad = hourcell(&[
        "query",
        "occupancy",
        "--area",
        "NOPE",
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-11-02T00:00:00Z",
        "--server",
        &s,
    ]);
    assert!(!bad.status.success());
    drop(node);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(json).collect();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "hourcell::access")
        .collect();
    let find = |rpc: &str| {
        access
            .iter()
            .find(|l| l["fields"]["rpc"] == rpc)
            .unwrap_or_else(|| panic!("no access line for {rpc}: {text}"))
    };
    let w = find("Query.WhereWas");
    assert_eq!(w["fields"]["status"], "Ok");
    assert_eq!(w["fields"]["principal"], "anonymous");
    assert!(w["fields"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        find("Query.Occupancy")["fields"]["status"],
        "InvalidArgument"
    );
    assert!(find("Admin.Status")["fields"]["status"] == "Ok");
    assert!(!text.contains("4242424242"), "a person id in the log");
}
