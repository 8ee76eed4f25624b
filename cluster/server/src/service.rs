//! gRPC services of `hourcell.v1` over a [`Node`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hourcell_node::node::Node;
use hourcell_node::NodeError;
use hourcell_proto::v1;
use hourcell_query::validate::RawEvent;
use tonic::{Request, Response, Status};

use crate::answer::{blocking, log_aggregate, suppression, whole_past_day};
use crate::auth::{Auth, Rpc};
use crate::convert::*;
use crate::gate::principal;
use crate::release::{Release, Why};

/// Persons per streamed message.
const STREAM_CHUNK: usize = 16_384;

#[derive(Clone)]
pub struct Services {
    pub node: Arc<Node>,
    pub auth: Arc<Auth>,
}

impl Services {
    /// A registry write: `put` validates and proposes `raw` off the async
    /// runtime; the answer counts what was accepted and lists the rest.
    async fn put<T: Send + Sync + 'static>(
        &self,
        raw: Vec<T>,
        put: fn(&Node, &[T]) -> Result<(u64, Vec<hourcell_query::validate::Rejection>), NodeError>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let node = self.node.clone();
        let (accepted, bad) = blocking(move || put(&node, &raw)).await?;
        Ok(Response::new(v1::PutResponse {
            accepted,
            rejected: rejections(bad),
        }))
    }
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for Services {
    async fn ingest(
        &self,
        req: Request<v1::IngestRequest>,
    ) -> Result<Response<v1::IngestResponse>, Status> {
        let _p = principal(&req)?;
        let raw: Vec<RawEvent> = req.into_inner().events.into_iter().map(raw_event).collect();
        let node = self.node.clone();
        let (accepted, bad) = blocking(move || node.ingest_owned(raw)).await?;
        Ok(Response::new(v1::IngestResponse {
            accepted,
            rejected: rejections(bad),
        }))
    }
}

#[tonic::async_trait]
impl v1::registry_server::Registry for Services {
    async fn put_addresses(
        &self,
        req: Request<v1::PutAddressesRequest>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let _p = principal(&req)?;
        let raw = req.into_inner().addresses.into_iter().map(raw_address);
        self.put(raw.collect(), |node, raw| node.put_addresses(raw))
            .await
    }

    async fn put_registrations(
        &self,
        req: Request<v1::PutRegistrationsRequest>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let _p = principal(&req)?;
        let raw = req
            .into_inner()
            .registrations
            .into_iter()
            .map(raw_registration);
        self.put(raw.collect(), |node, raw| node.put_registrations(raw))
            .await
    }

    async fn get_address(
        &self,
        req: Request<v1::GetAddressRequest>,
    ) -> Result<Response<v1::Address>, Status> {
        let _p = principal(&req)?;
        let code = req.into_inner().code;
        let a = self
            .node
            .store()
            .address(&code)
            .ok_or_else(|| Status::not_found(format!("address {code:?} not found")))?;
        Ok(Response::new(v1::Address {
            code: a.code,
            lat: a.lat,
            lng: a.lng,
            kind: a.kind.as_str().into(),
            area: a.area,
            label: a.label,
        }))
    }

    async fn get_registration(
        &self,
        req: Request<v1::GetRegistrationRequest>,
    ) -> Result<Response<v1::Registration>, Status> {
        let p = principal(&req)?;
        let q = req.into_inner();
        let person = q.person;
        let release = Release::check(
            &p,
            Rpc::GetRegistration,
            Why {
                purpose: &q.purpose,
                case_ref: &q.case_ref,
                task: None,
            },
            serde_json::json!({ "person": person }),
        )?;
        let node = self.node.clone();
        let r = blocking(move || {
            node.read_barrier()?;
            let r = node.store().registration(person);
            release.commit(&node, u64::from(r.is_some()))?;
            Ok(r)
        })
        .await?
        .ok_or_else(|| Status::not_found(format!("no registration for person {person}")))?;
        Ok(Response::new(v1::Registration {
            person: r.person,
            address: r.address,
            kind: r.kind.as_str().into(),
            valid_from: r.valid_from,
            valid_until: r.valid_until,
        }))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl v1::query_server::Query for Services {
    type WhoWasAtStream = BoxStream<v1::WhoWasAtResponse>;
    type NoActivitySinceStream = BoxStream<v1::NoActivitySinceResponse>;

    async fn who_was_at(
        &self,
        req: Request<v1::WhoWasAtRequest>,
    ) -> Result<Response<Self::WhoWasAtStream>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let params = serde_json::json!({
            "region": region_for_audit(r.region.as_ref()),
            "window": format!("{:?}", r.window),
        });
        let release = Release::check(
            &p,
            Rpc::WhoWasAt,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: None,
            },
            params,
        )?;
        let region = region_from_proto(r.region, "region")?;
        let (from, to, as_of) = window_from_proto(r.window, self.node.now())?;
        let node = self.node.clone();
        let max = r.max_staleness_ms;
        let (stale, ans) = blocking(move || {
            let stale = node.read_barrier_bounded(max, Some((from, to)))?;
            let ans = node.query().who_was_at(&region, from, to, as_of)?;
            release.commit(&node, ans.persons.len() as u64)?;
            Ok((stale, ans))
        })
        .await?;
        let window = effective(&ans.window);
        let mut msgs: Vec<Result<v1::WhoWasAtResponse, Status>> = ans
            .persons
            .chunks(STREAM_CHUNK)
            .map(|c| {
                Ok(v1::WhoWasAtResponse {
                    window: None,
                    persons: c.to_vec(),
                    staleness_ms: 0,
                })
            })
            .collect();
        if msgs.is_empty() {
            msgs.push(Ok(v1::WhoWasAtResponse::default()));
        }
        if let Some(Ok(first)) = msgs.first_mut() {
            first.window = Some(window);
            first.staleness_ms = stale;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }

    async fn where_was(
        &self,
        req: Request<v1::WhereWasRequest>,
    ) -> Result<Response<v1::WhereWasResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let params = serde_json::json!({
            "person": r.person,
            "window": format!("{:?}", r.window),
        });
        let release = Release::check(
            &p,
            Rpc::WhereWas,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: None,
            },
            params,
        )?;
        let (from, to, as_of) = window_from_proto(r.window, self.node.now())?;
        let node = self.node.clone();
        let person = r.person;
        let max = r.max_staleness_ms;
        let (stale, ans) = blocking(move || {
            let stale = node.read_barrier_bounded(max, None)?;
            let ans = node.query().where_was(person, from, to, as_of)?;
            release.commit(&node, u64::from(!ans.hours.is_empty()))?;
            Ok((stale, ans))
        })
        .await?;
        Ok(Response::new(v1::WhereWasResponse {
            staleness_ms: stale,
            window: Some(effective(&ans.window)),
            person: ans.person,
            hours: ans
                .hours
                .into_iter()
                .map(|h| v1::HourPlaces {
                    hour: h.hour * 3600,
                    cells: h.cells,
                    addresses: h.addresses,
                    sources: h.sources,
                })
                .collect(),
        }))
    }

    async fn occupancy(
        &self,
        req: Request<v1::OccupancyRequest>,
    ) -> Result<Response<v1::OccupancyResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        // Small counts are suppressed, not shown, unless the caller may see
        // persons anyway; such a caller asks only for published units, so
        // that two answers cannot be differenced into a small count.
        let k = suppression(&self.auth, &p);
        let unit = if k > 0 {
            Some(published_unit(
                r.region.as_ref(),
                r.window.as_ref(),
                self.node.now(),
            )?)
        } else {
            None
        };
        let region = region_from_proto(r.region, "region")?;
        let (from, to, as_of) = window_from_proto(r.window, self.node.now())?;
        let node = self.node.clone();
        let max = r.max_staleness_ms;
        let (stale, ans) = blocking(move || {
            let stale = node.read_barrier_bounded(max, Some((from, to)))?;
            Ok((stale, node.query().occupancy(&region, from, to, as_of)?))
        })
        .await?;
        if let Some((area, day)) = unit {
            log_aggregate(
                &self.node,
                &p,
                Rpc::Occupancy,
                serde_json::json!({ "area": area, "day": day }),
            );
        }
        let shown = |c: u64| if c < k { (0, true) } else { (c, false) };
        let (distinct, distinct_suppressed) = shown(ans.distinct);
        Ok(Response::new(v1::OccupancyResponse {
            staleness_ms: stale,
            window: Some(effective(&ans.window)),
            distinct,
            distinct_suppressed,
            suppressed_below: k,
            hours: ans
                .hours
                .into_iter()
                .map(|h| {
                    let (distinct, suppressed) = shown(h.distinct);
                    v1::HourCount {
                        hour: h.hour * 3600,
                        distinct,
                        suppressed,
                    }
                })
                .collect(),
        }))
    }

    async fn occupancy_grid(
        &self,
        req: Request<v1::OccupancyGridRequest>,
    ) -> Result<Response<v1::OccupancyGridResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        crate::grid::occupancy_grid(&self.node, &self.auth, &p, r)
            .await
            .map(Response::new)
    }

    async fn no_activity_since(
        &self,
        req: Request<v1::NoActivitySinceRequest>,
    ) -> Result<Response<Self::NoActivitySinceStream>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let params = serde_json::json!({
            "since": r.since,
            "as_of": r.as_of,
            "scope": region_for_audit(r.scope.as_ref()),
            "local": region_for_audit(r.local.as_ref()),
        });
        let release = Release::check(
            &p,
            Rpc::NoActivitySince,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: None,
            },
            params,
        )?;
        let scope = optional_region(r.scope, "scope")?;
        let local = optional_region(r.local, "local")?;
        let as_of = r.as_of.unwrap_or_else(|| self.node.now());
        let since = r.since;
        // Only activity inside `local` reads the cell shards of the window.
        let window = local.as_ref().map(|_| (since, as_of));
        let node = self.node.clone();
        let max = r.max_staleness_ms;
        let (stale, ans) = blocking(move || {
            let stale = node.read_barrier_bounded(max, window)?;
            let ans =
                node.query()
                    .no_activity_since(since, as_of, scope.as_ref(), local.as_ref())?;
            release.commit(&node, ans.persons.len() as u64)?;
            Ok((stale, ans))
        })
        .await?;
        let window = effective(&ans.window);
        let mut msgs: Vec<Result<v1::NoActivitySinceResponse, Status>> = ans
            .persons
            .chunks(STREAM_CHUNK)
            .map(|c| {
                Ok(v1::NoActivitySinceResponse {
                    staleness_ms: 0,
                    window: None,
                    persons: c
                        .iter()
                        .map(|p| v1::InactivePerson {
                            person: p.person,
                            last_seen: p.last_seen_hour.map(|h| h * 3600),
                        })
                        .collect(),
                })
            })
            .collect();
        if msgs.is_empty() {
            msgs.push(Ok(v1::NoActivitySinceResponse::default()));
        }
        if let Some(Ok(first)) = msgs.first_mut() {
            first.window = Some(window);
            first.staleness_ms = stale;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }
}

/// The units an occupancy answer with suppressed counts may cover: one
/// area (a partition of the jurisdiction, published in advance) over one
/// whole UTC day that has ended, as of its end or later. Any two such
/// units are disjoint or equal, so no difference of two answers isolates
/// fewer persons than an answer itself: the differencing attacks (an
/// address list with and without one house; a window with and without its
/// last hours; the same day as of two times) have nothing to subtract.
/// Returns the area and the day (RFC 3339).
fn published_unit(
    region: Option<&v1::Region>,
    window: Option<&v1::Window>,
    now: i64,
) -> Result<(String, String), Status> {
    let why = "callers who see suppressed counts query occupancy by published unit: one \
               area code over one whole past UTC day (--area A --from DAY --to DAY+1), so \
               that answers cannot be differenced into counts below the threshold";
    let area = match region.and_then(|r| r.kind.as_ref()) {
        Some(v1::region::Kind::Area(a)) => a.clone(),
        _ => return Err(invalid("region", "", why)),
    };
    Ok((area, whole_past_day(window, now, why)?))
}

#[tonic::async_trait]
impl v1::admin_server::Admin for Services {
    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let _p = principal(&req)?;
        let node = self.node.clone();
        let count = req.into_inner().count_postings;
        // Status doubles as a readiness probe: the full posting scan only
        // runs when asked for.
        let (st, postings, raft, shards) = blocking(move || {
            let st = node.stats()?;
            let postings = if count { node.count_postings()?.0 } else { 0 };
            let raft = node.replication().map(|r| {
                let s = r.handle.status(r.group);
                v1::RaftStatus {
                    node_id: r.handle.id(),
                    group: r.group,
                    leader: s.as_ref().map_or(0, |s| s.leader),
                    term: s.as_ref().map_or(0, |s| s.term),
                    is_leader: s.as_ref().is_some_and(|s| s.is_leader),
                    commit: s.as_ref().map_or(0, |s| s.commit),
                    applied: s.as_ref().map_or(0, |s| s.applied),
                    peers: r
                        .known_peers()
                        .into_iter()
                        .map(|(id, addr)| v1::RaftPeer { id, addr })
                        .collect(),
                    voters: s.as_ref().map_or(Vec::new(), |s| s.voters.clone()),
                    learners: s.as_ref().map_or(Vec::new(), |s| s.learners.clone()),
                    first_index: s.as_ref().map_or(0, |s| s.first_index),
                }
            });
            let shards = node.shard_members();
            Ok((st, postings, raft, shards))
        })
        .await?;
        let head = self.node.store().audit_head();
        Ok(Response::new(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            data_dir: self.node.data_dir().display().to_string(),
            slice_level: self.node.store().slice_level() as u32,
            persons: st.persons,
            addresses: st.addresses,
            registrations: st.registrations,
            events_accepted: self.node.events_accepted(),
            postings,
            disk_bytes: st.disk_bytes,
            first_hour: st.first_hour.map(|h| h * 3600),
            last_hour: st.last_hour.map(|h| h * 3600),
            raft,
            shards: shard_members_to_proto(shards),
            shard_map_version: if self.node.shards().is_some() {
                self.node.store().shard_map_version()
            } else {
                0
            },
            audit_head_seq: head.0,
            audit_head_hash: head.1.to_vec(),
        }))
    }

    async fn compact(
        &self,
        req: Request<v1::CompactRequest>,
    ) -> Result<Response<v1::CompactResponse>, Status> {
        let _p = principal(&req)?;
        let node = self.node.clone();
        let (before, after) = blocking(move || Ok(node.compact()?)).await?;
        Ok(Response::new(v1::CompactResponse {
            disk_bytes_before: before,
            disk_bytes_after: after,
        }))
    }

    type BackupStream = crate::backup::BackupStream;

    async fn backup(
        &self,
        req: Request<v1::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let p = principal(&req)?;
        let s = crate::backup::backup(self.node.clone(), &p, req.into_inner()).await?;
        Ok(Response::new(s))
    }

    async fn expire(
        &self,
        req: Request<v1::ExpireRequest>,
    ) -> Result<Response<v1::ExpireResponse>, Status> {
        let p = principal(&req)?;
        let node = self.node.clone();
        let (cutoff, removed) = blocking(move || node.expire(node.now(), &p.name)).await?;
        Ok(Response::new(v1::ExpireResponse {
            cutoff: cutoff * 3600,
            person_days_removed: removed,
        }))
    }

    async fn add_node(
        &self,
        req: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let _p = principal(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let m = blocking(move || {
            let rep = replicated(&node)?;
            node.add_node(r.id, &r.addr, r.replace)?;
            Ok(membership(rep))
        })
        .await?;
        Ok(Response::new(m))
    }

    async fn split_shard(
        &self,
        req: Request<v1::SplitShardRequest>,
    ) -> Result<Response<v1::SplitShardResponse>, Status> {
        let _p = principal(&req)?;
        let group = req.into_inner().group;
        let node = self.node.clone();
        let r = blocking(move || {
            let split = node.split_shard_group(group)?;
            let g = hourcell_node::shards::group_of(split.child);
            Ok(v1::SplitShardResponse {
                group: g,
                shard: node.describe_group(g),
                replicas: split.replicas,
                map_version: split.version,
            })
        })
        .await?;
        Ok(Response::new(r))
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let _p = principal(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let m = blocking(move || {
            let rep = replicated(&node)?;
            rep.remove_node(r.id)?;
            Ok(membership(rep))
        })
        .await?;
        Ok(Response::new(m))
    }
}

#[tonic::async_trait]
impl v1::audit_server::Audit for Services {
    async fn list(
        &self,
        req: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 1_000,
            n => (n as usize).min(1_000),
        };
        // The parameters name persons: released only through the gate.
        let release = match r.parameters {
            false => None,
            true => Some(Release::check(
                &p,
                Rpc::AuditList,
                Why {
                    purpose: &r.purpose,
                    case_ref: &r.case_ref,
                    task: None,
                },
                serde_json::json!({ "after_seq": r.after_seq, "limit": limit }),
            )?),
        };
        let node = self.node.clone();
        let (records, total) = blocking(move || {
            node.read_barrier()?;
            // The total as read, before this listing's own record: a
            // client paging to the end must not chase the records its
            // own pages add.
            let total = node.store().audit_len();
            let records = node.store().audit_records(r.after_seq, limit)?;
            if let Some(release) = &release {
                let named = records.iter().filter(|r| !r.entry.parameters.is_empty());
                release.commit(&node, named.count() as u64)?;
            }
            Ok((records, total))
        })
        .await?;
        let mut records: Vec<v1::AuditRecord> = records.into_iter().map(audit_to_proto).collect();
        if !r.parameters {
            for rec in &mut records {
                if !rec.parameters.is_empty() {
                    rec.parameters.clear();
                    rec.withheld = true;
                }
            }
        }
        Ok(Response::new(v1::ListAuditResponse { records, total }))
    }
}

fn replicated(node: &Node) -> Result<&hourcell_node::node::Replication, NodeError> {
    node.replication().ok_or_else(|| {
        NodeError::Refused("this is a single node without [cluster]: there is no membership".into())
    })
}

// ------------------------------------------------------------------ tasks

/// Most tasks per list page.
const MAX_PAGE: usize = 1_000;
/// Changes read from the log per step of a watch stream.
const WATCH_CHUNK: usize = 512;

#[tonic::async_trait]
impl v1::tasks_server::Tasks for Services {
    type WatchStream = BoxStream<v1::TaskChange>;

    async fn run(
        &self,
        req: Request<v1::RunTasksRequest>,
    ) -> Result<Response<v1::RunTasksResponse>, Status> {
        let _p = principal(&req)?;
        let at = req.into_inner().at;
        let node = self.node.clone();
        let s = blocking(move || node.run_tasks(at)).await?;
        Ok(Response::new(v1::RunTasksResponse {
            at: s.at,
            evaluation: s.evaluation,
            proposed: s.proposed,
            created: s.created,
            persons_scored: s.persons_scored,
            departures_checked: s.departures_checked,
            seconds: s.seconds,
        }))
    }

    async fn list(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let release = Release::check(
            &p,
            Rpc::TasksList,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: None,
            },
            serde_json::json!({
                "area": r.area, "kind": r.kind, "state": r.state,
                "page_size": r.page_size, "page_token": r.page_token,
            }),
        )?;
        let kind = match r.kind.as_str() {
            "" => None,
            k => Some(hourcell_storage::TaskKind::parse(k).ok_or_else(|| {
                invalid(
                    "kind",
                    k,
                    "expected REGISTER_NEWCOMER, RESIDENCE_MISMATCH or VERIFY_DEPARTURE",
                )
            })?),
        };
        let state = match r.state.as_str() {
            "" => None,
            s => Some(
                hourcell_storage::TaskState::parse(s)
                    .ok_or_else(|| invalid("state", s, "expected open, in_progress or resolved"))?,
            ),
        };
        let after = match r.page_token.as_str() {
            "" => 0,
            t => t
                .parse::<u64>()
                .map_err(|_| invalid("page_token", t, "not a token from a previous page"))?,
        };
        let size = match r.page_size as usize {
            0 => 100,
            n if n > MAX_PAGE => {
                return Err(invalid("page_size", n, "at most 1000"));
            }
            n => n,
        };
        let area = r.area;
        let node = self.node.clone();
        let tasks = blocking(move || {
            node.read_barrier()?;
            let tasks = node.store().tasks_after(after, size + 1, &mut |t| {
                kind.is_none_or(|k| t.draft.kind == k)
                    && state.is_none_or(|s| t.state == s)
                    && (area.is_empty() || t.draft.area == area)
            })?;
            release.commit(&node, tasks.len().min(size) as u64)?;
            Ok(tasks)
        })
        .await?;
        // One extra task fetched tells whether another page exists.
        let more = tasks.len() > size;
        let tasks: Vec<_> = tasks.into_iter().take(size).collect();
        let next_page_token = match (more, tasks.last()) {
            (true, Some(t)) => t.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListTasksResponse {
            tasks: tasks.into_iter().map(task_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get(&self, req: Request<v1::GetTaskRequest>) -> Result<Response<v1::Task>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let id = r.id;
        let release = Release::check(
            &p,
            Rpc::TasksGet,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: Some(id),
            },
            serde_json::json!({ "id": id }),
        )?;
        let node = self.node.clone();
        let t = blocking(move || {
            node.read_barrier()?;
            let t = node.store().task(id)?;
            release.commit(&node, u64::from(t.is_some()))?;
            Ok(t)
        })
        .await?;
        t.map(|t| Response::new(task_to_proto(t)))
            .ok_or_else(|| Status::not_found(format!("no task with id {id}")))
    }

    async fn update(
        &self,
        req: Request<v1::UpdateTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let release = Release::check(
            &p,
            Rpc::TasksUpdate,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: Some(r.id),
            },
            serde_json::json!({ "id": r.id, "state": r.state, "outcome": r.outcome }),
        )?;
        // The history names the authenticated caller; a handle in `by`
        // only says on whose behalf.
        let by = match r.by.trim() {
            "" => p.name.clone(),
            b if b == p.name => p.name.clone(),
            b => format!("{} (for {b})", p.name),
        };
        let node = self.node.clone();
        let t = blocking(move || {
            let t = node.update_task(r.id, &r.state, &r.outcome, &r.note, &by)?;
            release.commit(&node, 1)?;
            Ok(t)
        })
        .await?;
        Ok(Response::new(task_to_proto(t)))
    }

    async fn watch(
        &self,
        req: Request<v1::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cursor = r.cursor;
        let release = Release::check(
            &p,
            Rpc::TasksWatch,
            Why {
                purpose: &r.purpose,
                case_ref: &r.case_ref,
                task: None,
            },
            serde_json::json!({ "cursor": cursor }),
        )?;
        let node = self.node.clone();
        let seq = node.watch_tasks();
        // Reads the log after the cursor in chunks; when caught up, waits
        // for the next change. The log is durable and gap-free, so a client
        // that resumes from the last seq it received misses nothing and sees
        // nothing twice.
        // Each batch of changes read from the log is audited before it is
        // streamed.
        struct St {
            node: Arc<Node>,
            release: Release,
            cursor: u64,
            seq: tokio::sync::watch::Receiver<u64>,
            buf: std::collections::VecDeque<hourcell_storage::TaskChange>,
        }
        let st = St {
            node,
            release,
            cursor,
            seq,
            buf: Default::default(),
        };
        let stream = futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(c) = st.buf.pop_front() {
                    st.cursor = c.seq;
                    let msg = v1::TaskChange {
                        seq: c.seq,
                        task: Some(task_to_proto(c.task)),
                    };
                    return Some((Ok(msg), st));
                }
                let latest = *st.seq.borrow_and_update();
                if latest > st.cursor {
                    let (n, after, release) = (st.node.clone(), st.cursor, st.release.clone());
                    let read = blocking(move || {
                        let changes = n.store().task_changes(after, WATCH_CHUNK)?;
                        if !changes.is_empty() {
                            release.commit(&n, changes.len() as u64)?;
                        }
                        Ok(changes)
                    });
                    match read.await {
                        Ok(changes) if !changes.is_empty() => {
                            st.buf.extend(changes);
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => return Some((Err(e), st)),
                    }
                }
                if st.seq.changed().await.is_err() {
                    return None;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
