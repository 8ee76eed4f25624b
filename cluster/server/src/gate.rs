//! The one gate every client RPC passes before it reaches a service:
//! authentication (a bearer token, else a client certificate, else
//! anonymous), the per-principal rate limit, the role check of
//! [`Rpc::roles`], and an audit record of every refusal, committed before
//! the refusal is returned. Services read the admitted caller with
//! [`principal`]; a request that reached a service without passing here
//! is refused (fail closed).
//!
//! Deny by default: a path under `hourcell.v1` that is not in the RPC
//! table is refused here. Node-to-node services (`hourcell.internal.v1`)
//! admit only cluster nodes ([`NodeAuth`]: a node certificate, or the
//! cluster secret without TLS), before their bodies are decoded. Health
//! and reflection describe the server, not its data, and pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hourcell_node::node::Node;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

use crate::auth::{allowed, Auth, Principal, Rpc, NODE_SECRET_HEADER};
use crate::metrics::{Limit, Refusal, ServerMetrics};

/// The caller admitted by the gate, for a service to act as.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::internal("the request reached a service without passing the gate"))
}

/// A tower layer that puts [`Gated`] in front of the services.
#[derive(Clone)]
pub struct Gate {
    auth: Arc<Auth>,
    node: Arc<Node>,
    metrics: Arc<ServerMetrics>,
}

impl Gate {
    pub fn new(auth: Arc<Auth>, node: Arc<Node>, metrics: Arc<ServerMetrics>) -> Self {
        Gate {
            auth,
            node,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            auth: self.auth.clone(),
            node: self.node.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    auth: Arc<Auth>,
    node: Arc<Node>,
    metrics: Arc<ServerMetrics>,
}

/// What the gate decides for a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A client RPC: authenticate and check its roles.
    Client(Rpc),
    /// A path of the public API that no role may call.
    Unknown,
    /// The node-to-node services: cluster nodes only.
    Internal,
    /// Health and reflection.
    Pass,
}

/// The route of a gRPC path such as `/hourcell.v1.Query/WhoWasAt`.
pub fn route(path: &str) -> Route {
    if path.starts_with("/hourcell.internal.") {
        return Route::Internal;
    }
    let Some(method) = path.strip_prefix("/hourcell.v1.") else {
        return Route::Pass;
    };
    let name = method.replacen('/', ".", 1);
    match Rpc::ALL.iter().find(|r| r.name() == name) {
        Some(r) => Route::Client(*r),
        None => Route::Unknown,
    }
}

/// The caller's certificate name and address, from the connection.
fn peer<B>(req: &http::Request<B>) -> (Option<String>, Option<SocketAddr>) {
    let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    let cn = tls
        .and_then(|i| i.peer_certs())
        .and_then(|c| c.first().and_then(|d| crate::tls::common_name(d)));
    let addr = req
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| tls.and_then(|i| i.get_ref().remote_addr()));
    (cn, addr)
}

/// Admits the caller of `rpc` or says why not; refusals other than rate
/// limits are audited first.
async fn admit(
    auth: &Auth,
    node: &Arc<Node>,
    metrics: &ServerMetrics,
    rpc: Option<Rpc>,
    header: Option<&str>,
    cn: Option<&str>,
    addr: Option<SocketAddr>,
) -> Result<Principal, Status> {
    let now = node.now();
    let what = rpc.map_or("an unknown RPC", |r| r.name());
    let (principal, status) = match auth.authenticate(header, cn, now) {
        Err(e) => {
            // Failed logins are rate-limited per client address before
            // they are audited, so that bad credentials cannot flood the
            // audit log.
            let from = addr.map_or("unknown".to_string(), |a| a.ip().to_string());
            if !auth.limiter.allow(&format!("unauthenticated@{from}")) {
                metrics.limited(Limit::bad_credentials);
                return Err(Status::resource_exhausted(
                    "rate limit: too many requests with bad credentials from this address",
                ));
            }
            (
                Principal {
                    name: "unauthenticated".into(),
                    roles: Default::default(),
                },
                Status::unauthenticated(e.to_string()),
            )
        }
        Ok(p) if !auth.limiter.allow(&p.name) => {
            metrics.limited(Limit::principal);
            return Err(Status::resource_exhausted(format!(
                "rate limit: {} may make {} requests per second",
                p.name,
                auth.limiter.rate()
            )));
        }
        Ok(p) => match rpc {
            Some(rpc) if allowed(&p, rpc) => return Ok(p),
            Some(rpc) => {
                let need: Vec<&str> = rpc.roles().iter().map(|r| r.name()).collect();
                let msg = format!(
                    "{} may not call {}: it needs one of the roles {}",
                    p.name,
                    rpc.name(),
                    need.join(", ")
                );
                (p, Status::permission_denied(msg))
            }
            None => {
                let msg = format!("{} may not call {what}: no role may", p.name);
                (p, Status::permission_denied(msg))
            }
        },
    };
    metrics.refused(if status.code() == tonic::Code::Unauthenticated {
        Refusal::unauthenticated
    } else {
        Refusal::permission_denied
    });
    let entry = hourcell_storage::AuditEntry {
        time: now,
        principal: principal.name.clone(),
        roles: principal.role_names(),
        rpc: what.into(),
        outcome: format!("denied: {}", status.message()),
        ..Default::default()
    };
    let node = node.clone();
    match tokio::task::spawn_blocking(move || node.audit(vec![entry])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not audit a denied request"),
        Err(e) => tracing::warn!(error = %e, "could not audit a denied request"),
    }
    Err(status)
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The service polled ready goes with this request; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rpc = match route(req.uri().path()) {
            Route::Pass => return Box::pin(inner.call(req)),
            Route::Internal => {
                let (cn, addr) = peer(&req);
                let secret = req.headers().get(NODE_SECRET_HEADER).map(|v| v.as_bytes());
                return match self.auth.nodes.admit(cn.as_deref(), secret) {
                    Ok(id) => {
                        req.extensions_mut().insert(id);
                        Box::pin(inner.call(req))
                    }
                    Err(why) => {
                        self.metrics.refused(Refusal::internal);
                        // Not audited: a flood of these must cost nothing.
                        tracing::debug!(?addr, why = why.message(), "refused an internal call");
                        let refusal = why.into_http();
                        Box::pin(async move { Ok(refusal) })
                    }
                };
            }
            Route::Client(rpc) => Some(rpc),
            Route::Unknown => None,
        };
        let (auth, node, metrics) = (self.auth.clone(), self.node.clone(), self.metrics.clone());
        Box::pin(async move {
            let header = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("<not ascii>").to_string());
            let (cn, addr) = peer(&req);
            let admitted = admit(
                &auth,
                &node,
                &metrics,
                rpc,
                header.as_deref(),
                cn.as_deref(),
                addr,
            )
            .await;
            match admitted {
                Ok(p) => {
                    let Some(_slot) = auth.in_flight.enter(&p.name) else {
                        metrics.limited(Limit::in_flight);
                        return Ok(Status::resource_exhausted(format!(
                            "{} has {} requests in flight already",
                            p.name,
                            auth.in_flight.limit()
                        ))
                        .into_http());
                    };
                    let (principal, started) = (p.name.clone(), std::time::Instant::now());
                    req.extensions_mut().insert(p);
                    let resp = inner.call(req).await;
                    if let Ok(r) = &resp {
                        let (code, took) = (status_of(r), started.elapsed());
                        metrics.answered(rpc, code, took);
                        access_log(&principal, rpc, code, took);
                    }
                    resp
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The gRPC status of a response as its head carries it (OK when it is
/// sent later, in a stream's trailers).
fn status_of<B>(resp: &http::Response<B>) -> tonic::Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from)
}

/// One line per answered client RPC: who, what, the status of the
/// response head and how long the service took to produce it. Never a
/// request's parameters (they name persons); those are in the audit log.
/// A status sent later in a stream's trailers is not seen here.
fn access_log(principal: &str, rpc: Option<Rpc>, status: tonic::Code, took: Duration) {
    tracing::info!(
        target: "hourcell::access",
        principal,
        rpc = rpc.map_or("unknown", |r| r.name()),
        status = ?status,
        latency_ms = took.as_secs_f64() * 1e3,
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_rpc_has_a_route_and_nothing_else_does() {
        for rpc in Rpc::ALL {
            let (svc, method) = rpc.name().split_once('.').unwrap();
            assert_eq!(
                route(&format!("/hourcell.v1.{svc}/{method}")),
                Route::Client(rpc)
            );
        }
        assert_eq!(route("/hourcell.v1.Query/DumpEverything"), Route::Unknown);
        assert_eq!(route("/hourcell.v1.Secret/WhoWasAt"), Route::Unknown);
        assert_eq!(route("/hourcell.internal.v1.Raft/Send"), Route::Internal);
        assert_eq!(route("/hourcell.internal.v1.Shard/Read"), Route::Internal);
        assert_eq!(
            route("/hourcell.internal.v9.Anything/Else"),
            Route::Internal
        );
        assert_eq!(route("/grpc.health.v1.Health/Check"), Route::Pass);
    }
}
