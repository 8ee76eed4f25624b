//! Shell completions and man pages, generated from the clap definitions
//! (clap_complete, clap_mangen) so they never drift from the flags.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell` (rendered in memory: clap_complete
/// panics on a closed pipe, and `| head` must not).
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hourcell", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `hourcell.1` and one page per subcommand (`hourcell-query.1`,
/// `hourcell-audit-verify.1`, ...) into `dir`; returns how many.
pub fn write_man(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    write_page(dir, &cmd, "hourcell")
}

fn write_page(dir: &Path, cmd: &clap::Command, name: &str) -> Result<usize> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .render(&mut buf)
        .context("rendering a man page")?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        n += write_page(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_cover_every_subcommand() {
        let bash = completions(clap_complete::Shell::Bash);
        for sub in ["query", "audit", "tasks", "import", "completions"] {
            assert!(
                bash.contains(sub),
                "{sub} missing from the bash completions"
            );
        }
        assert!(bash.contains("--server") && bash.contains("geojson"));
        let dir = tempfile::tempdir().unwrap();
        let n = write_man(dir.path()).unwrap();
        assert!(n > 15, "{n} pages");
        assert!(dir.path().join("hourcell-query.1").exists());
        // Each query kind has its page, with its own flags only.
        let who = std::fs::read_to_string(dir.path().join("hourcell-query-who-was-at.1")).unwrap();
        assert!(
            who.contains("HOURCELL_SERVER"),
            "the env variables are documented"
        );
        let flag = |page: &str, f: &str| page.contains(&format!("\\-\\-{f}"));
        assert!(flag(&who, "rect") && !flag(&who, "level") && !flag(&who, "person"));
        let grid = std::fs::read_to_string(dir.path().join("hourcell-query-grid.1")).unwrap();
        assert!(flag(&grid, "level") && !flag(&grid, "purpose"));
        assert!(dir.path().join("hourcell-audit-verify.1").exists());
    }
}
