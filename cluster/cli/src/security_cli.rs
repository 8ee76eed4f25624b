//! `hourcell audit list|verify`, `hourcell token keygen|issue` and
//! `hourcell retention apply`.

use anyhow::{anyhow, Result};
use hourcell_proto::v1;
use hourcell_query::time::{format_time, now};

use crate::cli::{AuditCommand, CertsCommand, Format, RetentionCommand, TokenCommand};
use crate::client::{channel, status_error, Ch};

/// Shown in place of parameters that retention removed.
const REDACTED: &str = "(redacted: past retention)";
/// Shown in place of parameters not asked for.
const WITHHELD: &str = "(withheld: ask with --purpose and --case)";

/// Why the caller wants the records' parameters (which name persons):
/// both empty leaves them out.
#[derive(Default)]
struct Why {
    purpose: String,
    case_ref: String,
}

fn audit_client(ch: Ch) -> v1::audit_client::AuditClient<Ch> {
    v1::audit_client::AuditClient::new(ch).max_decoding_message_size(64 << 20)
}

/// Every record, page by page; with the parameters if `why` says why.
async fn all_records(server: &str, why: &Why) -> Result<Vec<v1::AuditRecord>> {
    let mut c = audit_client(channel(server).await?);
    let mut out: Vec<v1::AuditRecord> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r.seq);
        let page = c
            .list(v1::ListAuditRequest {
                after_seq: after,
                limit: 1_000,
                parameters: !(why.purpose.is_empty() && why.case_ref.is_empty()),
                purpose: why.purpose.clone(),
                case_ref: why.case_ref.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let n = page.records.len();
        out.extend(page.records);
        if n == 0 || out.last().map_or(0, |r| r.seq) >= page.total {
            return Ok(out);
        }
    }
}

pub async fn run_audit(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::List(a) => {
            let why = Why {
                purpose: a.purpose.unwrap_or_default(),
                case_ref: a.case_ref.unwrap_or_default(),
            };
            let records = all_records(&a.server, &why).await?;
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        format_time(r.time),
                        r.principal.clone(),
                        r.rpc.clone(),
                        r.purpose.clone(),
                        r.case_ref.clone(),
                        r.persons_returned.to_string(),
                        r.outcome.clone(),
                        if r.redacted {
                            REDACTED.to_string()
                        } else if r.withheld {
                            WITHHELD.to_string()
                        } else {
                            r.parameters.clone()
                        },
                    ]
                })
                .collect();
            let header = [
                "seq",
                "time",
                "principal",
                "rpc",
                "purpose",
                "case",
                "persons",
                "outcome",
                "parameters",
            ];
            let text = match a.format {
                Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
                Format::Json => {
                    let v: Vec<serde_json::Value> = records
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "seq": r.seq,
                                "time": format_time(r.time),
                                "principal": r.principal,
                                "roles": r.roles,
                                "rpc": r.rpc,
                                "parameters": r.parameters,
                                "redacted": r.redacted,
                                "withheld": r.withheld,
                                "purpose": r.purpose,
                                "case": r.case_ref,
                                "persons_returned": r.persons_returned,
                                "outcome": r.outcome,
                                "hash": hourcell_storage::audit::hex(&r.hash),
                            })
                        })
                        .collect();
                    format!("{}\n", serde_json::to_string_pretty(&v)?)
                }
                Format::Csv => {
                    let mut w = csv::Writer::from_writer(Vec::new());
                    w.write_record(header)?;
                    for r in &rows {
                        w.write_record(r)?;
                    }
                    String::from_utf8(w.into_inner()?)?
                }
                Format::Table => format!(
                    "{}{} records\n",
                    crate::client::aligned(&header, &rows),
                    rows.len()
                ),
            };
            crate::client::print_stdout(&text)
        }
        AuditCommand::Verify(a) => {
            let checkpoints = a
                .expect
                .iter()
                .map(|c| c.parse::<hourcell_storage::audit::Checkpoint>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("invalid --expect: {}", e.why))?;
            let stored = verified_records(&a.server, &checkpoints).await?;
            if a.format == Format::Json {
                let v = serde_json::json!({
                    "verified": true,
                    "records": stored.len(),
                    "head": stored.last().map(|r| hourcell_storage::audit::hex(&r.hash)),
                    "checkpoints_matched": checkpoints.len(),
                });
                return crate::client::print_stdout(&format!("{v}\n"));
            }
            crate::client::print_stdout(&format!(
                "audit log verified: {} records, hash chain intact{}{}\n",
                stored.len(),
                stored
                    .last()
                    .map(|r| format!(", head {}", hourcell_storage::audit::hex(&r.hash)))
                    .unwrap_or_default(),
                if checkpoints.is_empty() {
                    String::new()
                } else {
                    format!(", {} checkpoint(s) match", checkpoints.len())
                }
            ))
        }
        AuditCommand::Checkpoint(a) => {
            let stored = verified_records(&a.server, &[]).await?;
            let Some(head) = stored.last() else {
                return Err(anyhow!("the audit log is empty: nothing to checkpoint yet"));
            };
            let c = hourcell_storage::audit::Checkpoint {
                seq: head.seq,
                hash: head.hash,
            };
            let text = match a.format {
                Format::Json => format!(
                    "{}\n",
                    serde_json::json!({
                        "seq": c.seq,
                        "hash": hourcell_storage::audit::hex(&c.hash),
                        "checkpoint": c.to_string(),
                    })
                ),
                _ => format!("{c}\n"),
            };
            crate::client::print_stdout(&text)
        }
    }
}

/// Every record, checked as a chain and against `checkpoints`.
async fn verified_records(
    server: &str,
    checkpoints: &[hourcell_storage::audit::Checkpoint],
) -> Result<Vec<hourcell_storage::audit::AuditRecord>> {
    let records = all_records(server, &Why::default()).await?;
    let stored = records
        .iter()
        .map(hourcell_server::convert::audit_from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!(e))?;
    hourcell_storage::audit::verify_anchored(&stored, checkpoints).map_err(|e| {
        crate::exit::Failure::new(
            crate::exit::VERIFY_FAILED,
            format!("audit log does NOT verify: {e}"),
        )
    })?;
    Ok(stored)
}

pub fn run_token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Keygen(a) => {
            use rand::RngCore;
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            if a.out.exists() {
                return Err(anyhow!(
                    "{} exists; refusing to overwrite a key (tokens signed with it would stop working)",
                    a.out.display()
                ));
            }
            hourcell_server::tls::write_new(&a.out, &key, true)?;
            println!(
                "wrote a 32-byte token key to {}; point [security] token_key_file at it on every node",
                a.out.display()
            );
            Ok(())
        }
        TokenCommand::Issue(a) => {
            let key = std::fs::read(&a.key_file)
                .map_err(|e| anyhow!("cannot read --key-file {}: {e}", a.key_file.display()))?;
            if key.len() < 32 {
                return Err(anyhow!(
                    "--key-file holds {} bytes; at least 32 are needed",
                    key.len()
                ));
            }
            let roles: Vec<String> = a.roles.iter().map(|r| r.name().to_string()).collect();
            if roles.is_empty() {
                return Err(anyhow!("--roles needs at least one role"));
            }
            if a.subject.trim().is_empty() {
                return Err(anyhow!("--subject is empty"));
            }
            let t = hourcell_server::auth::issue_token(
                &key,
                &hourcell_server::auth::Claims {
                    sub: a.subject.clone(),
                    roles,
                    exp: now() + a.ttl_secs as i64,
                },
            );
            println!("{t}");
            Ok(())
        }
    }
}

pub async fn run_retention(cmd: RetentionCommand) -> Result<()> {
    match cmd {
        RetentionCommand::Apply(a) => {
            let r = crate::client::admin_client(channel(&a.server).await?)
                .expire(v1::ExpireRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if a.format == Format::Json {
                let v = serde_json::json!({
                    "cutoff": format_time(r.cutoff),
                    "person_days_removed": r.person_days_removed,
                });
                return crate::client::print_stdout(&format!("{v}\n"));
            }
            if r.person_days_removed == 0 {
                // Nothing was that old: nothing removed, nothing audited.
                return crate::client::print_stdout(&format!(
                    "nothing is older than {}: nothing to remove\n",
                    format_time(r.cutoff)
                ));
            }
            crate::client::print_stdout(&format!(
                "removed every hour before {} on every replica ({} person-days); recorded in the audit log\n",
                format_time(r.cutoff),
                r.person_days_removed
            ))
        }
    }
}

pub fn run_certs(cmd: CertsCommand) -> Result<()> {
    match cmd {
        CertsCommand::Init(a) => {
            if a.nodes == 0 || a.nodes > 100 {
                return Err(anyhow!("--nodes {} is outside 1..=100", a.nodes));
            }
            let files = hourcell_server::tls::init_dir(&a.dir, a.nodes, &a.hosts)?;
            let d = a.dir.canonicalize().unwrap_or(a.dir.clone());
            println!("wrote {} files to {}:", files.len(), d.display());
            for f in &files {
                println!("  {}", f.file_name().unwrap_or_default().to_string_lossy());
            }
            println!(
                "\nIn node N's config:\n\n[security]\ntoken_key_file = {:?}\n\n[security.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n\n[security.cert_roles]\nadmin = [\"all\"]\n",
                d.join("token.key"),
                d.join("node-N.pem"),
                d.join("node-N.key"),
                d.join("ca.pem"),
            );
            println!(
                "Then, as the admin:\n  export HOURCELL_CA={} HOURCELL_CERT={} HOURCELL_KEY={}\n  hourcell status --server 127.0.0.1:7420",
                d.join("ca.pem").display(),
                d.join("admin.pem").display(),
                d.join("admin.key").display()
            );
            println!(
                "Or with a token:\n  hourcell token issue --key-file {} --subject analyst-1 --roles analyst",
                d.join("token.key").display()
            );
            Ok(())
        }
    }
}
