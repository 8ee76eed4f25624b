//! `hourcell tasks run|list|show|start|resolve|watch`: the field-staff side
//! of the rule layer, over gRPC. Rendering is pure and unit-tested; the
//! `run` function only glues it to the network.

use anyhow::{anyhow, Result};
use futures::StreamExt;
use hourcell_proto::v1;
use hourcell_query::time::{format_time, parse_time};
use serde_json::{json, Value};

use crate::cli::{Format, TasksCommand};
use crate::client::{aligned, channel, print_stdout, status_error, MAX_MESSAGE_BYTES};

type Client = v1::tasks_client::TasksClient<crate::client::Ch>;

async fn client(server: &str) -> Result<Client> {
    Ok(v1::tasks_client::TasksClient::new(channel(server).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

fn opt_time(t: Option<i64>) -> Value {
    t.map_or(Value::Null, |t| Value::String(format_time(t)))
}

/// The JSON of a task: the list fields, plus evidence and registration
/// when `detail`.
pub fn task_json(t: &v1::Task, detail: bool) -> Value {
    let mut v = json!({
        "id": t.id,
        "kind": t.kind,
        // A string, as everywhere in the CLI's JSON (see client::render).
        "person": t.person.to_string(),
        "address": t.address,
        "area": t.area,
        "score": t.score,
        "state": t.state,
        "outcome": if t.outcome.is_empty() { Value::Null } else { Value::String(t.outcome.clone()) },
        "last_seen": opt_time(t.last_seen),
        "created_at": format_time(t.created_at),
        "updated_at": format_time(t.updated_at),
        "updated_by": t.updated_by,
        "note": t.note,
        "evaluation": t.evaluation,
    });
    if detail {
        v["evidence"] = t
            .evidence
            .iter()
            .map(|e| {
                json!({
                    "source": e.source,
                    "nights_by_address": e.nights_by_address,
                    "nights_by_location": e.nights_by_location,
                    "weight": e.weight,
                    "contribution": e.contribution,
                })
            })
            .collect();
        v["registration"] = t.registration.as_ref().map_or(Value::Null, |r| {
            json!({
                "address": r.address,
                "kind": r.kind,
                "valid_from": format_time(r.valid_from),
                "valid_until": opt_time(r.valid_until),
            })
        });
    }
    v
}

const LIST_HEADER: [&str; 9] = [
    "id",
    "kind",
    "person",
    "address",
    "area",
    "score",
    "state",
    "outcome",
    "last_seen",
];

fn list_row(t: &v1::Task) -> Vec<String> {
    vec![
        t.id.to_string(),
        t.kind.clone(),
        t.person.to_string(),
        t.address.clone(),
        t.area.clone(),
        t.score.map(|s| format!("{s:.3}")).unwrap_or_default(),
        t.state.clone(),
        t.outcome.clone(),
        t.last_seen.map(format_time).unwrap_or_default(),
    ]
}

pub fn render_list(tasks: &[v1::Task], format: Format) -> Result<String> {
    Ok(match format {
        Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
        Format::Json => {
            let v =
                json!({ "tasks": tasks.iter().map(|t| task_json(t, false)).collect::<Vec<_>>() });
            format!("{}\n", serde_json::to_string_pretty(&v)?)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(LIST_HEADER)?;
            for t in tasks {
                w.write_record(list_row(t))?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = tasks.iter().map(list_row).collect();
            let mut s = if rows.is_empty() {
                String::new()
            } else {
                aligned(&LIST_HEADER, &rows)
            };
            s.push_str(&format!("{} tasks\n", tasks.len()));
            s
        }
    })
}

pub fn render_task(t: &v1::Task, format: Format) -> Result<String> {
    Ok(match format {
        Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&task_json(t, true))?),
        Format::Csv => render_list(std::slice::from_ref(t), Format::Csv)?,
        Format::Table => {
            let mut s = String::new();
            let mut kv = |k: &str, v: String| s.push_str(&format!("{k:<12} {v}\n"));
            kv("id", t.id.to_string());
            kv("kind", t.kind.clone());
            kv("person", t.person.to_string());
            kv("address", format!("{} (area {})", t.address, t.area));
            kv("score", t.score.map_or("-".into(), |s| format!("{s:.3}")));
            kv(
                "state",
                if t.outcome.is_empty() {
                    t.state.clone()
                } else {
                    format!("{} ({})", t.state, t.outcome)
                },
            );
            if let Some(r) = &t.registration {
                kv(
                    "registered",
                    format!(
                        "{} {} from {}{}",
                        r.kind,
                        r.address,
                        format_time(r.valid_from),
                        r.valid_until
                            .map(|u| format!(" until {}", format_time(u)))
                            .unwrap_or_default()
                    ),
                );
            } else {
                kv("registered", "no".into());
            }
            kv("last seen", t.last_seen.map_or("-".into(), format_time));
            kv(
                "created",
                format!("{} by {}", format_time(t.created_at), t.evaluation),
            );
            if !t.updated_by.is_empty() {
                kv(
                    "updated",
                    format!("{} by {}", format_time(t.updated_at), t.updated_by),
                );
            }
            if !t.note.is_empty() {
                kv("note", t.note.clone());
            }
            if !t.evidence.is_empty() {
                let rows: Vec<Vec<String>> = t
                    .evidence
                    .iter()
                    .map(|e| {
                        vec![
                            e.source.clone(),
                            e.nights_by_address.to_string(),
                            e.nights_by_location.to_string(),
                            format!("{:.3}", e.weight),
                            format!("{:.3}", e.contribution),
                        ]
                    })
                    .collect();
                s.push_str("evidence:\n");
                s.push_str(&aligned(
                    &[
                        "source",
                        "nights by address",
                        "nights by location",
                        "weight",
                        "contribution",
                    ],
                    &rows,
                ));
            }
            s
        }
    })
}

fn render_change(c: &v1::TaskChange, format: Format) -> Result<String> {
    let t = c.task.clone().unwrap_or_default();
    Ok(match format {
        Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
        Format::Json => {
            let v = json!({ "seq": c.seq, "task": task_json(&t, false) });
            format!("{}\n", serde_json::to_string(&v)?)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let mut row = vec![c.seq.to_string()];
            row.extend(list_row(&t));
            w.write_record(row)?;
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table => format!(
            "seq {:<6} task {:<6} {:<18} person {:<20} {:<14} {}{}\n",
            c.seq,
            t.id,
            t.kind,
            t.person,
            t.address,
            t.state,
            if t.outcome.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.outcome)
            }
        ),
    })
}

pub fn render_run(r: &v1::RunTasksResponse, format: Format) -> Result<String> {
    Ok(match format {
        Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({
                "at": format_time(r.at),
                "evaluation": r.evaluation,
                "proposed": r.proposed,
                "created": r.created,
                "persons_scored": r.persons_scored,
                "departures_checked": r.departures_checked,
                "seconds": r.seconds,
            }))?
        ),
        _ => format!(
            "evaluated the rules as of {} in {:.2} s: {} persons scored, {} temporary registrations checked; {} tasks called for, {} new (the rest are already open or recently rejected)\n",
            format_time(r.at),
            r.seconds,
            r.persons_scored,
            r.departures_checked,
            r.proposed,
            r.created
        ),
    })
}

/// Sends a state change and prints the task as it now is.
async fn update(server: &str, req: v1::UpdateTaskRequest, format: Format) -> Result<()> {
    let t = client(server)
        .await?
        .update(req)
        .await
        .map_err(status_error)?
        .into_inner();
    print_stdout(&render_task(&t, format)?)
}

pub async fn run(cmd: TasksCommand) -> Result<()> {
    match cmd {
        TasksCommand::Run(a) => {
            let at = a.at.as_deref().map(|s| parse_time("--at", s)).transpose()?;
            let mut c = client(&a.server).await?;
            let r = c
                .run(v1::RunTasksRequest { at })
                .await
                .map_err(status_error)?
                .into_inner();
            print_stdout(&render_run(&r, a.format)?)
        }
        TasksCommand::List(a) => {
            if a.page_size == 0 || a.page_size > 1000 {
                return Err(anyhow!(
                    "invalid --page-size {}: must be 1..=1000",
                    a.page_size
                ));
            }
            let mut c = client(&a.server).await?;
            let mut tasks = Vec::new();
            let mut token = String::new();
            loop {
                let r = c
                    .list(v1::ListTasksRequest {
                        area: a.area.clone().unwrap_or_default(),
                        kind: a.kind.clone().unwrap_or_default(),
                        state: a.state.clone().unwrap_or_default(),
                        page_size: a.page_size,
                        page_token: token,
                        purpose: a.why.purpose.clone().unwrap_or_default(),
                        case_ref: a.why.case.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                tasks.extend(r.tasks);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            print_stdout(&render_list(&tasks, a.format)?)
        }
        TasksCommand::Show(a) => {
            let mut c = client(&a.server).await?;
            let t = c
                .get(v1::GetTaskRequest {
                    id: a.id,
                    purpose: a.why.purpose.unwrap_or_default(),
                    case_ref: a.why.case.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_stdout(&render_task(&t, a.format)?)
        }
        TasksCommand::Start(a) => {
            let req = v1::UpdateTaskRequest {
                id: a.id,
                state: "in_progress".into(),
                outcome: String::new(),
                note: a.note,
                by: a.by,
                purpose: a.why.purpose.unwrap_or_default(),
                case_ref: a.why.case.unwrap_or_default(),
            };
            update(&a.server, req, a.format).await
        }
        TasksCommand::Resolve(a) => {
            let req = v1::UpdateTaskRequest {
                id: a.id,
                state: "resolved".into(),
                outcome: a.outcome,
                note: a.note,
                by: a.by,
                purpose: a.why.purpose.unwrap_or_default(),
                case_ref: a.why.case.unwrap_or_default(),
            };
            update(&a.server, req, a.format).await
        }
        TasksCommand::Watch(a) => {
            let mut c = client(&a.server).await?;
            let mut stream = c
                .watch(v1::WatchTasksRequest {
                    cursor: a.cursor,
                    purpose: a.why.purpose.clone().unwrap_or_default(),
                    case_ref: a.why.case.clone().unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if a.format == Format::Csv {
                let mut h = vec!["seq"];
                h.extend(LIST_HEADER);
                print_stdout(&format!("{}\n", h.join(",")))?;
            }
            let mut n = 0;
            while a.limit.is_none_or(|l| n < l) {
                let Some(change) = stream.next().await else {
                    break;
                };
                let change = change.map_err(status_error)?;
                print_stdout(&render_change(&change, a.format)?)?;
                n += 1;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> v1::Task {
        v1::Task {
            id: 7,
            kind: "REGISTER_NEWCOMER".into(),
            person: 42,
            address: "H-1".into(),
            area: "A1".into(),
            score: Some(0.857),
            state: "open".into(),
            evidence: vec![v1::SourceEvidence {
                source: "rental".into(),
                nights_by_address: 6,
                nights_by_location: 0,
                weight: 1.0,
                contribution: 6.0 / 7.0,
            }],
            last_seen: Some(1_795_820_400),
            created_at: 1_795_824_000,
            evaluation: "rules@2026-11-28T00:00:00Z".into(),
            updated_at: 1_795_824_000,
            ..Default::default()
        }
    }

    #[test]
    fn list_json_has_the_documented_shape() {
        let dep = v1::Task {
            id: 8,
            kind: "VERIFY_DEPARTURE".into(),
            score: None,
            ..task()
        };
        let s = render_list(&[task(), dep], Format::Json).unwrap();
        let v: Value = serde_json::from_str(&s).unwrap();
        let t = &v["tasks"][0];
        for k in ["id", "kind", "person", "address", "area", "score", "state"] {
            assert!(t.get(k).is_some(), "missing {k}");
        }
        assert_eq!(t["person"], task().person.to_string(), "ids are strings");
        assert_eq!(t["score"].as_f64(), Some(0.857));
        assert!(v["tasks"][1]["score"].is_null());
        assert_eq!(t["last_seen"], "2026-11-27T23:00:00Z");
    }

    #[test]
    fn show_lists_the_evidence() {
        let s = render_task(&task(), Format::Table).unwrap();
        assert!(s.contains("evidence:"), "{s}");
        assert!(s.contains("rental"), "{s}");
        assert!(s.contains("registered   no"), "{s}");
        let j: Value = serde_json::from_str(&render_task(&task(), Format::Json).unwrap()).unwrap();
        assert_eq!(j["evidence"][0]["nights_by_address"], 6);
        let csv = render_list(&[task()], Format::Csv).unwrap();
        assert!(
            csv.starts_with("id,kind,person,address,area,score,state"),
            "{csv}"
        );
    }
}
