//! Joining a running cluster: a node started with `--join` asks its peers,
//! over their Admin service, to add it.

use hourcell_node::config::ClusterConfig;

use crate::auth::{issue_token, Claims};
use crate::channel::{admin_client, channel_with, Credentials};
use crate::tls::ClientTls;

/// Asks the configured peers, in turn, to add this node (replacing its old
/// membership, if any) until one of them does.
pub async fn ask_to_join(c: ClusterConfig, token_key: Option<Vec<u8>>, tls: Option<ClientTls>) {
    let me = c
        .peers
        .iter()
        .find(|p| p.id == c.node_id)
        .map(|p| p.addr.clone())
        .unwrap_or_default();
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        for p in c.peers.iter().filter(|p| p.id != c.node_id) {
            let req = hourcell_proto::v1::AddNodeRequest {
                id: c.node_id,
                addr: me.clone(),
                replace: true,
            };
            // Nodes of a cluster share the token key: the request is signed
            // as this node, with the operator role, for five minutes.
            let creds = match &token_key {
                Some(k) => Credentials::bearer(&issue_token(
                    k,
                    &Claims {
                        sub: format!("node-{}", c.node_id),
                        roles: vec!["operator".into()],
                        exp: hourcell_query::time::now() + 300,
                    },
                ))
                .unwrap_or_default(),
                None => Credentials::default(),
            };
            // With TLS the node's certificate (node-<id>) speaks for it.
            let tls = tls.clone().unwrap_or_default();
            match channel_with(&p.addr, creds, &tls).await {
                Ok(ch) => match admin_client(ch).add_node(req).await {
                    Ok(_) => {
                        tracing::info!(
                            via = p.id,
                            "joined the cluster as a learner; waiting for a snapshot"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(via = p.id, error = %e.message(), "join refused; retrying")
                    }
                },
                Err(e) => tracing::debug!(via = p.id, error = %e, "peer unreachable"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}
