//! Who may call what: roles, principals, bearer tokens, and the table of
//! every RPC with the roles it needs. Deny by default: an RPC missing from
//! [`Rpc::roles`] cannot be called by anyone (the matrix test checks every
//! RPC against every role).
//!
//! Tokens are JWTs signed with HMAC-SHA256 (`alg: HS256`) under a key the
//! node reads from `[security] token_key_file`; claims `sub` (the
//! principal), `roles` (role names) and `exp` (unix seconds) are required.
//! `hourcell token issue` makes one.

use crate::error::ServerError;
use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use hourcell_node::config::SecurityConfig;

pub use hourcell_node::roles::{Role, ALL_ROLES};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: BTreeSet<Role>,
}

impl Principal {
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }

    pub fn role_names(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Every client RPC. Node-to-node raft traffic is not in this table: it is
/// authenticated by mutual TLS between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    Ingest,
    PutAddresses,
    PutRegistrations,
    GetAddress,
    GetRegistration,
    WhoWasAt,
    WhereWas,
    Occupancy,
    OccupancyGrid,
    NoActivitySince,
    Status,
    Compact,
    AddNode,
    RemoveNode,
    Expire,
    TasksRun,
    TasksList,
    TasksGet,
    TasksUpdate,
    TasksWatch,
    AuditList,
    Backup,
    SplitShard,
}

impl Rpc {
    pub const ALL: [Rpc; 23] = [
        Rpc::Ingest,
        Rpc::PutAddresses,
        Rpc::PutRegistrations,
        Rpc::GetAddress,
        Rpc::GetRegistration,
        Rpc::WhoWasAt,
        Rpc::WhereWas,
        Rpc::Occupancy,
        Rpc::OccupancyGrid,
        Rpc::NoActivitySince,
        Rpc::Status,
        Rpc::Compact,
        Rpc::AddNode,
        Rpc::RemoveNode,
        Rpc::Expire,
        Rpc::TasksRun,
        Rpc::TasksList,
        Rpc::TasksGet,
        Rpc::TasksUpdate,
        Rpc::TasksWatch,
        Rpc::AuditList,
        Rpc::Backup,
        Rpc::SplitShard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Ingest => "Ingest.Ingest",
            Rpc::PutAddresses => "Registry.PutAddresses",
            Rpc::PutRegistrations => "Registry.PutRegistrations",
            Rpc::GetAddress => "Registry.GetAddress",
            Rpc::GetRegistration => "Registry.GetRegistration",
            Rpc::WhoWasAt => "Query.WhoWasAt",
            Rpc::WhereWas => "Query.WhereWas",
            Rpc::Occupancy => "Query.Occupancy",
            Rpc::OccupancyGrid => "Query.OccupancyGrid",
            Rpc::NoActivitySince => "Query.NoActivitySince",
            Rpc::Status => "Admin.Status",
            Rpc::Compact => "Admin.Compact",
            Rpc::AddNode => "Admin.AddNode",
            Rpc::RemoveNode => "Admin.RemoveNode",
            Rpc::Expire => "Admin.Expire",
            Rpc::TasksRun => "Tasks.Run",
            Rpc::TasksList => "Tasks.List",
            Rpc::TasksGet => "Tasks.Get",
            Rpc::TasksUpdate => "Tasks.Update",
            Rpc::TasksWatch => "Tasks.Watch",
            Rpc::AuditList => "Audit.List",
            Rpc::Backup => "Admin.Backup",
            Rpc::SplitShard => "Admin.SplitShard",
        }
    }

    /// The roles that may call this RPC (any one suffices).
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Rpc::Ingest | Rpc::PutAddresses | Rpc::PutRegistrations => &[Ingest],
            // An address record names no person.
            Rpc::GetAddress => &[Ingest, Analyst, Investigator, Fieldwork],
            // A registration ties a person to an address: person-level.
            Rpc::GetRegistration => &[Investigator, Fieldwork],
            Rpc::WhoWasAt | Rpc::WhereWas | Rpc::NoActivitySince => &[Investigator],
            Rpc::Occupancy | Rpc::OccupancyGrid => &[Analyst, Investigator],
            Rpc::Status => &[Operator],
            Rpc::Compact | Rpc::AddNode | Rpc::RemoveNode | Rpc::Expire | Rpc::SplitShard => {
                &[Operator]
            }
            Rpc::TasksRun => &[Fieldwork, Operator],
            Rpc::TasksList | Rpc::TasksGet | Rpc::TasksUpdate | Rpc::TasksWatch => &[Fieldwork],
            Rpc::AuditList => &[Auditor],
            // Every person's data: operators, with a purpose and a case,
            // audited (see `backup.rs`).
            Rpc::Backup => &[Operator],
        }
    }

    /// Answers that name persons: they pass [`crate::release::Release`]
    /// (a purpose and a case reference, an audit record committed before
    /// the answer is returned). Audit.List names persons only in the
    /// records' parameters, and passes the gate when it is asked for them.
    pub fn person_level(self) -> bool {
        matches!(
            self,
            Rpc::WhoWasAt
                | Rpc::WhereWas
                | Rpc::NoActivitySince
                | Rpc::GetRegistration
                | Rpc::TasksList
                | Rpc::TasksGet
                | Rpc::TasksUpdate
                | Rpc::TasksWatch
                | Rpc::AuditList
                | Rpc::Backup
        )
    }
}

/// The claims of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub roles: Vec<String>,
    pub exp: i64,
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("bad bearer token: {0}")]
    BadToken(String),
    #[error("bearer token expired at {0}")]
    Expired(i64),
    #[error("this node does not accept bearer tokens (no [security] token_key_file)")]
    NoKey,
}

type HmacSha256 = Hmac<Sha256>;

fn sign(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// Makes an HS256 token.
pub fn issue_token(key: &[u8], claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(claims).expect("claims encode"));
    let signing_input = format!("{header}.{body}");
    let sig = B64.encode(sign(key, signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

/// Checks an HS256 token's signature (in constant time) and expiry at
/// `now`, and returns the principal it names.
pub fn verify_token(key: &[u8], token: &str, now: i64) -> Result<Principal, AuthError> {
    let bad = |why: &str| AuthError::BadToken(why.to_string());
    let mut parts = token.split('.');
    let (Some(h), Some(b), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not three dot-separated parts"));
    };
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(h).map_err(|_| bad("header is not base64url"))?)
            .map_err(|_| bad("header is not JSON"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(bad("only alg HS256 is accepted"));
    }
    let sig = B64
        .decode(s)
        .map_err(|_| bad("signature is not base64url"))?;
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(format!("{h}.{b}").as_bytes());
    m.verify_slice(&sig)
        .map_err(|_| bad("signature does not match"))?;
    let claims: Claims =
        serde_json::from_slice(&B64.decode(b).map_err(|_| bad("claims are not base64url"))?)
            .map_err(|e| AuthError::BadToken(format!("claims: {e}")))?;
    if claims.exp <= now {
        return Err(AuthError::Expired(claims.exp));
    }
    if claims.sub.trim().is_empty() {
        return Err(bad("empty sub"));
    }
    let roles = Role::parse_list(&claims.roles).map_err(|e| AuthError::BadToken(e.to_string()))?;
    Ok(Principal {
        name: claims.sub,
        roles,
    })
}

/// A token bucket per principal: `rate` requests per second, bursts of
/// twice that. Shared by clones.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    rate: u32,
    buckets: std::sync::Arc<
        parking_lot::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    >,
}

impl RateLimiter {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            buckets: Default::default(),
        }
    }

    /// Takes one request from `who`'s bucket; false if it is empty.
    pub fn allow(&self, who: &str) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        let cap = 2.0 * f64::from(self.rate);
        let mut b = self.buckets.lock();
        if b.len() > 100_000 {
            // Forget idle principals rather than grow without bound.
            b.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 60);
        }
        // Called on every request: allocate the key only for a new caller.
        if !b.contains_key(who) {
            b.insert(who.to_string(), (cap, now));
        }
        let (tokens, last) = b.get_mut(who).expect("just inserted");
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(self.rate)).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }
}

/// Requests in flight per principal, capped: one caller cannot hold every
/// worker. The map holds only callers with requests in flight, so it is
/// bounded by the requests the server is running.
#[derive(Debug, Clone)]
pub struct InFlight {
    limit: usize,
    counts: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new(64)
    }
}

/// A request counted in [`InFlight`] until this is dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    of: InFlight,
    who: String,
}

impl InFlight {
    pub fn new(limit: usize) -> Self {
        InFlight {
            limit,
            counts: Default::default(),
        }
    }

    /// Counts a request of `who`, or None when `who` already has `limit`
    /// in flight.
    pub fn enter(&self, who: &str) -> Option<InFlightGuard> {
        let mut c = self.counts.lock();
        match c.get_mut(who) {
            Some(n) if *n >= self.limit => return None,
            Some(n) => *n += 1,
            None => {
                c.insert(who.to_string(), 1);
            }
        }
        Some(InFlightGuard {
            of: self.clone(),
            who: who.to_string(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Callers with requests in flight.
    pub fn callers(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut c = self.of.counts.lock();
        if let Some(n) = c.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.who);
            }
        }
    }
}

/// How a node authenticates requests.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Requests per second per principal.
    pub limiter: RateLimiter,
    /// HS256 key for bearer tokens.
    pub token_key: Option<Vec<u8>>,
    /// Roles of a request without credentials (only on an `insecure`
    /// node; `hourcell dev` gives the local user every role).
    pub anonymous: BTreeSet<Role>,
    /// Counts below this are suppressed for callers without the
    /// investigator role.
    pub suppress_below: u64,
    /// Roles of client certificates by subject common name.
    pub cert_roles: std::collections::HashMap<String, BTreeSet<Role>>,
    /// How the internal services recognise a cluster node.
    pub nodes: NodeAuth,
    /// Requests in flight per principal.
    pub in_flight: InFlight,
}

/// How a node proves itself to another's internal Raft and Shard
/// services: never anonymously.
#[derive(Debug, Clone, Default)]
pub enum NodeAuth {
    /// A client certificate named `node-<id>`, verified by TLS.
    #[default]
    Certificate,
    /// The cluster secret in the [`NODE_SECRET_HEADER`] header (a cluster
    /// without TLS).
    Secret(hourcell_node::config::Secret),
}

/// The header a node sends the cluster secret in.
pub const NODE_SECRET_HEADER: &str = "x-hourcell-cluster-secret";

/// A caller the gate admitted to the internal services: the node id its
/// certificate names (None when it showed the shared cluster secret,
/// which does not say which node it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIdentity(pub Option<u64>);

impl NodeAuth {
    /// Admits a node by its certificate's common name `cn` or the secret
    /// it sent.
    pub fn admit(
        &self,
        cn: Option<&str>,
        secret: Option<&[u8]>,
    ) -> Result<NodeIdentity, tonic::Status> {
        let need_cert = "internal services need a cluster node's client certificate (node-<id>)";
        match self {
            NodeAuth::Certificate => match cn {
                Some(cn) if is_node_name(cn) => Ok(NodeIdentity(cn[5..].parse().ok())),
                // A verified certificate, but not a node's.
                Some(cn) => Err(tonic::Status::permission_denied(format!(
                    "{cn} is not a cluster node: {need_cert}"
                ))),
                None => Err(tonic::Status::unauthenticated(need_cert)),
            },
            NodeAuth::Secret(s) => match secret {
                Some(got) if s.matches(got) => Ok(NodeIdentity(None)),
                Some(_) => Err(tonic::Status::unauthenticated("wrong cluster secret")),
                None => Err(tonic::Status::unauthenticated(format!(
                    "internal services need the cluster secret ({NODE_SECRET_HEADER})"
                ))),
            },
        }
    }
}

/// Whether a certificate's common name is a cluster node's (`node-<id>`).
pub fn is_node_name(cn: &str) -> bool {
    cn.strip_prefix("node-")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

impl Auth {
    /// The authenticator a `[security]` section describes (reads the token key).
    pub fn from_config(c: &SecurityConfig) -> Result<Auth, ServerError> {
        let token_key = match &c.token_key_file {
            None => None,
            Some(p) => {
                let k = std::fs::read(p).map_err(|source| ServerError::TokenKey {
                    path: p.clone(),
                    source,
                })?;
                if k.len() < 32 {
                    return Err(ServerError::ShortTokenKey {
                        path: p.clone(),
                        len: k.len(),
                    });
                }
                Some(k)
            }
        };
        Ok(Auth {
            token_key,
            anonymous: if c.insecure {
                Role::parse_list(&c.anonymous_roles)?
            } else {
                Default::default()
            },
            suppress_below: c.suppress_below,
            limiter: RateLimiter::new(c.requests_per_sec),
            cert_roles: c
                .cert_roles
                .iter()
                .map(|(cn, r)| Ok((cn.clone(), Role::parse_list(r)?)))
                .collect::<Result<_, hourcell_node::NodeError>>()?,
            in_flight: InFlight::default(),
            nodes: match (&c.tls, &c.cluster_secret) {
                (None, Some(s)) => NodeAuth::Secret(s.clone()),
                // With TLS, or a single node (nothing calls its internal
                // services): certificates only.
                _ => NodeAuth::Certificate,
            },
        })
    }

    /// The principal behind a request: its `authorization` header
    /// (`Bearer TOKEN`) if it has one, else its client certificate's common
    /// name (verified by TLS against the CA), else anonymous.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        client_cn: Option<&str>,
        now: i64,
    ) -> Result<Principal, AuthError> {
        if let (None, Some(cn)) = (authorization, client_cn) {
            let mut roles = self.cert_roles.get(cn).cloned().unwrap_or_default();
            if is_node_name(cn) {
                roles.insert(Role::Operator);
            }
            return Ok(Principal {
                name: cn.to_string(),
                roles,
            });
        }
        match authorization {
            Some(h) => {
                let token = h
                    .strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        AuthError::BadToken("authorization is not `Bearer TOKEN`".into())
                    })?;
                let key = self.token_key.as_ref().ok_or(AuthError::NoKey)?;
                verify_token(key, token.trim(), now)
            }
            None => Ok(Principal {
                name: "anonymous".into(),
                roles: self.anonymous.clone(),
            }),
        }
    }
}

/// Whether `p` may call `rpc`.
pub fn allowed(p: &Principal, rpc: Rpc) -> bool {
    rpc.roles().iter().any(|r| p.has(*r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_refuse_tampering() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: "analyst-7".into(),
            roles: vec!["analyst".into()],
            exp: 2_000,
        };
        let t = issue_token(key, &claims);
        let p = verify_token(key, &t, 1_000).unwrap();
        assert_eq!(p.name, "analyst-7");
        assert!(p.has(Role::Analyst) && !p.has(Role::Investigator));
        assert_eq!(verify_token(key, &t, 2_000), Err(AuthError::Expired(2_000)));
        assert!(verify_token(b"another key", &t, 1_000).is_err());
        // Raising one's own roles breaks the signature.
        let forged = Claims {
            roles: vec!["investigator".into()],
            ..claims
        };
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let tampered = format!("{}.{body}.{}", parts[0], parts[2]);
        assert!(matches!(
            verify_token(key, &tampered, 1_000),
            Err(AuthError::BadToken(_))
        ));
        for junk in ["", "a.b", "a.b.c", "...", "a.b.c.d"] {
            assert!(verify_token(key, junk, 1_000).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn requests_in_flight_are_capped_per_principal_and_forgotten_when_done() {
        let f = InFlight::new(2);
        let a1 = f.enter("a").unwrap();
        let a2 = f.enter("a").unwrap();
        assert!(f.enter("a").is_none(), "a third request of a");
        let b = f.enter("b").unwrap();
        assert_eq!(f.callers(), 2);
        drop(a1);
        let a3 = f.enter("a").unwrap();
        drop((a2, a3, b));
        assert_eq!(f.callers(), 0, "idle callers are not remembered");
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refuses() {
        let l = RateLimiter::new(5);
        let ok = (0..30).filter(|_| l.allow("a")).count();
        assert!((10..=11).contains(&ok), "{ok}");
        assert!(l.allow("b"), "principals have their own buckets");
        assert!((0..1000).all(|_| RateLimiter::new(0).allow("a")));
    }

    #[test]
    fn every_rpc_names_roles_and_person_level_ones_only_investigators_field_staff_auditors_and_backups(
    ) {
        for rpc in Rpc::ALL {
            assert!(!rpc.roles().is_empty(), "{rpc:?}");
            if rpc.person_level() {
                // Auditors only for the audit log's parameters.
                assert!(
                    rpc.roles().iter().all(|r| match r {
                        Role::Investigator | Role::Fieldwork => true,
                        Role::Auditor => rpc == Rpc::AuditList,
                        // A backup: every person's data, to an operator.
                        Role::Operator => rpc == Rpc::Backup,
                        _ => false,
                    }),
                    "{rpc:?}"
                );
            }
        }
    }
}
