//! `Admin.Backup`: one raft group's store image, streamed. Every person's
//! data leaves this way, so it clears the release gate (purpose, case, an
//! audit record committed before the first byte) like any person-level
//! answer.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hourcell_node::node::backup::ImageRole;
use hourcell_node::node::Node;
use hourcell_proto::v1;
use tonic::Status;

use crate::answer::blocking;
use crate::auth::{Principal, Rpc};
use crate::release::{Release, Why};

/// Bytes of key-value pairs per chunk.
const CHUNK_BYTES: usize = 1 << 20;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<v1::BackupChunk, Status>> + Send>>;

pub async fn backup(
    node: Arc<Node>,
    p: &Principal,
    r: v1::BackupRequest,
) -> Result<BackupStream, Status> {
    let group = r.group.max(1);
    let release = Release::check(
        p,
        Rpc::Backup,
        Why {
            purpose: &r.purpose,
            case_ref: &r.case_ref,
            task: None,
        },
        serde_json::json!({ "group": group }),
    )?;
    let n = node.clone();
    let image = blocking(move || {
        let image = n.backup_image(group)?;
        release.commit(&n, image.persons)?;
        Ok(image)
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::BackupChunk, Status>>(4);
    if r.unchanged_since > 0 && image.applied_index == r.unchanged_since {
        let head = v1::BackupChunk {
            group: image.group,
            role: role(image.role) as i32,
            applied_index: image.applied_index,
            persons: image.persons,
            image: Vec::new(),
            unchanged: true,
        };
        let _ = tx.send(Ok(head)).await;
        return Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)));
    }
    tokio::task::spawn_blocking(move || {
        let mut first = Some(v1::BackupChunk {
            group: image.group,
            role: role(image.role) as i32,
            applied_index: image.applied_index,
            persons: image.persons,
            image: Vec::new(),
            unchanged: false,
        });
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        let send = |pairs: &mut Vec<(Vec<u8>, Vec<u8>)>, first: &mut Option<v1::BackupChunk>| {
            let mut c = first.take().unwrap_or_default();
            c.image = bincode::serde::encode_to_vec(&*pairs, bincode::config::standard())
                .expect("pairs always encode");
            pairs.clear();
            tx.blocking_send(Ok(c)).is_ok()
        };
        let scanned = image.view.scan(&[0x00], &[0xff; 16], &mut |k, v| {
            bytes += k.len() + v.len();
            pairs.push((k.to_vec(), v.to_vec()));
            if bytes >= CHUNK_BYTES {
                bytes = 0;
                return send(&mut pairs, &mut first);
            }
            true
        });
        match scanned {
            Ok(()) => {
                if !pairs.is_empty() || first.is_some() {
                    send(&mut pairs, &mut first);
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "reading the image of group {group}: {e}"
                ))));
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

fn role(r: ImageRole) -> v1::StoreRole {
    match r {
        ImageRole::Meta => v1::StoreRole::Meta,
        ImageRole::Shard => v1::StoreRole::Shard,
    }
}
