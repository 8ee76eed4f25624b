//! The `hourcell` binary: parse flags, load config, call a library function.

use clap::Parser;
use hourcell_cli::cli::{Cli, Command};
use hourcell_cli::{bench, client, dev, security_cli, tasks_cli};
use hourcell_node::config;
use hourcell_server::server;
use hourcell_town as town;

fn init_logging(default: &str) {
    init_logging_as(default, config::LogFormat::Text);
}

fn init_logging_as(default: &str, format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => log.init(),
        config::LogFormat::Json => log.json().init(),
    }
}

fn main() {
    let cli = Cli::parse();
    cli.credentials.export();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Dev(a) => {
                init_logging("warn");
                dev::run(a).await
            }
            Command::Node(a) => {
                let mut cfg = config::NodeConfig::load(&a.config)?;
                if a.join {
                    match cfg.cluster.as_mut() {
                        Some(c) => c.join = true,
                        None => anyhow::bail!(
                            "--join needs a [cluster] section in {}",
                            a.config.display()
                        ),
                    }
                }
                init_logging_as(&cfg.log, cfg.log_format);
                Ok(server::run(cfg).await?)
            }
            Command::Gen(a) => {
                init_logging("warn");
                let start = match &a.start {
                    Some(s) => hourcell_query::time::parse_time("start", s)?,
                    None => town::TownConfig::default().start_unix,
                };
                let t = town::Town::new(town::TownConfig {
                    seed: a.seed,
                    persons: a.persons,
                    days: a.days,
                    start_unix: start,
                    ..town::TownConfig::default()
                });
                let n = t.write_csv(&a.out, true)?;
                if let Some(dir) = &a.peers {
                    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let p = hourcell_cli::gen_peers::write_peer_rows(&t, dir, workers)?;
                    println!(
                        "wrote {} peer rows in {} files to {} in {:.1} s",
                        p.events,
                        p.parts.len(),
                        dir.display(),
                        p.seconds
                    );
                }
                println!(
                    "wrote {} addresses, {} registrations, {n} events and truth for {} persons to {}",
                    t.addresses().len(),
                    t.registry().len(),
                    a.persons,
                    a.out.display()
                );
                Ok(())
            }
            Command::Import(a) => {
                init_logging("warn");
                client::run_import(a).await
            }
            Command::Query(a) => {
                init_logging("warn");
                client::run_query(a).await
            }
            Command::Status(a) => {
                init_logging("warn");
                client::run_status(a).await
            }
            Command::Cluster(a) => {
                init_logging("warn");
                client::run_cluster(a).await
            }
            Command::Tasks(a) => {
                init_logging("warn");
                tasks_cli::run(a).await
            }
            Command::Bench(a) => {
                init_logging("warn");
                match a.params.clone() {
                    Some(path) => hourcell_cli::bench_params::run_params(&a, &path)
                        .await
                        .map(|_| ()),
                    None => bench::run_bench(a).await,
                }
            }
            Command::Audit(a) => {
                init_logging("warn");
                security_cli::run_audit(a).await
            }
            Command::Token(a) => security_cli::run_token(a),
            Command::Certs(a) => security_cli::run_certs(a),
            Command::Completions(a) => {
                client::print_stdout(&hourcell_cli::docs::completions(a.shell))
            }
            Command::Man(a) => {
                let pages = hourcell_cli::docs::write_man(&a.out)?;
                println!("wrote {pages} man pages to {}", a.out.display());
                Ok(())
            }
            Command::Retention(a) => {
                init_logging("warn");
                security_cli::run_retention(a).await
            }
            Command::Backup(a) => {
                init_logging("warn");
                hourcell_cli::backup_cli::run_backup(a).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(hourcell_cli::exit::code_of(&e));
    }
}
