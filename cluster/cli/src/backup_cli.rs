//! `hourcell backup create | verify | restore`.
//!
//! A backup is a directory: `manifest.json` and one image file per raft
//! group (`group-1.img`: the metadata store, and on an unsharded cluster
//! every slice). An image file is a sequence of frames, each a 4-byte
//! big-endian length and a bincode `Vec<(key, value)>`, keys ascending
//! across the file. The manifest records each image's raft index, pair
//! count, size and SHA-256. `create` writes into `DIR.partial` and renames
//! it to `DIR` only when every image is complete, so a directory named as
//! the backup is a whole one.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hourcell_proto::v1;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::{BackupCommand, BackupCreateArgs, BackupRestoreArgs, BackupVerifyArgs, Format};
use crate::client::{admin_client, channel, print_stdout};
use crate::exit::{Failure, VERIFY_FAILED};

/// The manifest's format version.
const FORMAT: u32 = 1;

/// Largest frame accepted when reading an image (a frame is about 1 MiB).
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// When the backup was taken (RFC 3339).
    pub created: String,
    pub hourcell_version: String,
    /// The node it was taken through.
    pub server: String,
    pub groups: Vec<GroupEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupEntry {
    pub group: u64,
    /// "meta" or "shard".
    pub role: String,
    /// The raft index the image is at: every write acknowledged before
    /// the backup began is in it.
    pub applied_index: u64,
    pub persons: u64,
    pub file: String,
    pub pairs: u64,
    pub bytes: u64,
    pub sha256: String,
    /// Taken over from the `--base` backup (the group applied no write
    /// since): the file is that backup's, linked or copied.
    #[serde(default)]
    pub reused: bool,
}

/// Why a backup directory is not a whole, intact backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not empty: back up into a new directory")]
    Exists { path: PathBuf },
    #[error("bad manifest {path}: {why}")]
    Manifest { path: PathBuf, why: String },
    #[error("{file}: {why}")]
    Image { file: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub async fn run_backup(cmd: BackupCommand) -> Result<()> {
    match cmd {
        BackupCommand::Create(a) => create(a).await,
        BackupCommand::Verify(a) => verify_cmd(a),
        BackupCommand::Restore(a) => restore(a),
    }
}

async fn create(a: BackupCreateArgs) -> Result<()> {
    if std::fs::read_dir(&a.to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::Exists { path: a.to.clone() }.into());
    }
    let st = admin_client(channel(&a.server).await?)
        .status(v1::StatusRequest::default())
        .await
        .map_err(crate::client::status_error)?
        .into_inner();
    // An incremental backup builds on a whole, intact earlier one.
    let base = match &a.base {
        Some(dir) => Some((
            dir.clone(),
            verify(dir)
                .map_err(|e| Failure::new(VERIFY_FAILED, format!("the --base backup: {e}")))?
                .0,
        )),
        None => None,
    };
    let partial = a.to.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let mut groups = Vec::new();
    if !st.shards.is_empty() || st.shard_map_version > 0 {
        // Every data shard first, each from a node that holds it (its
        // leader when known), then the metadata store: every id a shard
        // image uses was assigned before the metadata image was taken.
        for (group, holders) in shard_holders(&a.server).await? {
            let mut last = None;
            for server in &holders {
                match fetch_image(server, group, &a, &partial, base.as_ref()).await {
                    Ok(g) => {
                        last = None;
                        groups.push(g);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e.context(format!("backing up shard group {group}")));
            }
        }
    }
    groups.push(fetch_image(&a.server, 1, &a, &partial, base.as_ref()).await?);
    let manifest = Manifest {
        format: FORMAT,
        created: hourcell_query::time::format_time(hourcell_query::time::now()),
        hourcell_version: env!("CARGO_PKG_VERSION").into(),
        server: crate::client::shown_server(&a.server),
        groups,
    };
    let mpath = partial.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(&mpath, format!("{text}\n")).map_err(io(&mpath))?;
    if a.to.exists() {
        std::fs::remove_dir(&a.to).map_err(io(&a.to))?;
    }
    std::fs::rename(&partial, &a.to).map_err(io(&a.to))?;
    if a.format == Format::Json {
        let v = serde_json::json!({ "dir": a.to, "manifest": manifest });
        return print_stdout(&format!("{v}\n"));
    }
    let meta = manifest.groups.last().expect("the metadata image");
    let shards = manifest.groups.len() - 1;
    let (pairs, bytes) = manifest
        .groups
        .iter()
        .fold((0, 0), |(p, b), g| (p + g.pairs, b + g.bytes));
    print_stdout(&format!(
        "backup of group 1 at raft index {}{} ({} persons, {} pairs, {} bytes) written to {}\n",
        meta.applied_index,
        if shards > 0 {
            format!(" and {shards} data shards")
        } else {
            String::new()
        },
        meta.persons,
        pairs,
        bytes,
        a.to.display()
    ))
}

/// Each data shard's raft group and the nodes (addresses) that hold it,
/// its leader first, from every node's status.
async fn shard_holders(server: &str) -> Result<std::collections::BTreeMap<u64, Vec<String>>> {
    let (first, _) = crate::client::raft_status_of(server)
        .await
        .ok_or_else(|| anyhow::anyhow!("{} is unreachable", crate::client::shown_server(server)))?;
    let mut holders: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for p in &first.peers {
        let Some((_, shards)) = crate::client::raft_status_of(&p.addr).await else {
            continue;
        };
        for sh in shards {
            let h = holders.entry(sh.group).or_default();
            if sh.leader == p.id {
                h.insert(0, p.addr.clone());
            } else {
                h.push(p.addr.clone());
            }
        }
    }
    Ok(holders)
}

/// Streams group `group`'s image from `server` into `dir`, or with a
/// `base` backup whose image of the group is still current, takes that
/// image over.
async fn fetch_image(
    server: &str,
    group: u64,
    a: &BackupCreateArgs,
    dir: &Path,
    base: Option<&(PathBuf, Manifest)>,
) -> Result<GroupEntry> {
    let earlier = base.and_then(|(d, m)| {
        m.groups
            .iter()
            .find(|g| g.group == group)
            .map(|g| (d.as_path(), g))
    });
    let mut stream = admin_client(channel(server).await?)
        .backup(v1::BackupRequest {
            group,
            purpose: a.purpose.clone(),
            case_ref: a.case_ref.clone(),
            unchanged_since: earlier.map_or(0, |(_, g)| g.applied_index),
        })
        .await
        .map_err(crate::client::status_error)?
        .into_inner();
    let file = format!("group-{group}.img");
    let path = dir.join(&file);
    if let Some((from, g)) = earlier {
        let first = stream
            .message()
            .await
            .map_err(crate::client::status_error)?;
        if first.as_ref().is_some_and(|c| c.unchanged) {
            let src = from.join(&g.file);
            if std::fs::hard_link(&src, &path).is_err() {
                std::fs::copy(&src, &path).map_err(io(&path))?;
            }
            return Ok(GroupEntry {
                file,
                reused: true,
                ..g.clone()
            });
        }
        return write_image(file, &path, first, &mut stream).await;
    }
    write_image(file, &path, None, &mut stream).await
}

/// Writes an image's chunks (`first`, if already read, then the rest of
/// `stream`) to `path`.
async fn write_image(
    file: String,
    path: &Path,
    first: Option<v1::BackupChunk>,
    stream: &mut tonic::Streaming<v1::BackupChunk>,
) -> Result<GroupEntry> {
    let mut pending = first;
    let mut out = BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    let mut hash = Sha256::new();
    let (mut pairs, mut bytes) = (0u64, 0u64);
    let mut head: Option<v1::BackupChunk> = None;
    loop {
        let c = match pending.take() {
            Some(c) => c,
            None => match stream
                .message()
                .await
                .map_err(crate::client::status_error)?
            {
                Some(c) => c,
                None => break,
            },
        };
        let decoded = decode_frame(&file, &c.image)?;
        pairs += decoded.len() as u64;
        let len = u32::try_from(c.image.len()).context("a chunk over 4 GiB")?;
        for part in [&len.to_be_bytes()[..], &c.image[..]] {
            out.write_all(part).map_err(io(path))?;
            hash.update(part);
            bytes += part.len() as u64;
        }
        if head.is_none() {
            head = Some(v1::BackupChunk {
                image: Vec::new(),
                ..c
            });
        }
    }
    out.flush().map_err(io(path))?;
    out.get_ref().sync_all().map_err(io(path))?;
    let head = head.ok_or_else(|| BackupError::Image {
        file: file.clone(),
        why: "the node sent no image".into(),
    })?;
    Ok(GroupEntry {
        group: head.group,
        role: match v1::StoreRole::try_from(head.role) {
            Ok(v1::StoreRole::Shard) => "shard",
            _ => "meta",
        }
        .into(),
        applied_index: head.applied_index,
        persons: head.persons,
        file,
        pairs,
        bytes,
        sha256: hex(&hash.finalize()),
        reused: false,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_frame(file: &str, b: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, BackupError> {
    bincode::serde::decode_from_slice::<Vec<(Vec<u8>, Vec<u8>)>, _>(
        b,
        bincode::config::standard().with_limit::<MAX_FRAME>(),
    )
    .map(|(v, _)| v)
    .map_err(|e| BackupError::Image {
        file: file.into(),
        why: format!("a frame does not decode: {e}"),
    })
}

/// Reads an image file frame by frame.
struct Frames {
    file: String,
    r: BufReader<std::fs::File>,
}

impl Frames {
    fn open(dir: &Path, file: &str) -> Result<Self, BackupError> {
        let path = dir.join(file);
        Ok(Frames {
            file: file.into(),
            r: BufReader::new(std::fs::File::open(&path).map_err(io(&path))?),
        })
    }

    fn next(&mut self) -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, BackupError> {
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => {
                return Err(BackupError::Io {
                    path: self.file.clone().into(),
                    source,
                })
            }
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(BackupError::Image {
                file: self.file.clone(),
                why: format!("a frame of {n} bytes (at most {MAX_FRAME})"),
            });
        }
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).map_err(|e| BackupError::Image {
            file: self.file.clone(),
            why: format!("truncated: {e}"),
        })?;
        decode_frame(&self.file, &b).map(Some)
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| BackupError::Manifest {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if m.format != FORMAT {
        return Err(BackupError::Manifest {
            path,
            why: format!("format {} (this hourcell reads {FORMAT})", m.format),
        });
    }
    Ok(m)
}

/// What `verify` found in a whole, intact backup.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub groups: usize,
    pub pairs: u64,
    pub audit_records: u64,
}

/// Checks every image against the manifest (size, SHA-256, pair count,
/// key shapes and order) and the metadata image's audit chain.
pub fn verify(dir: &Path) -> Result<(Manifest, Verified), BackupError> {
    let m = read_manifest(dir)?;
    let mut total = 0;
    let mut audit_records = 0;
    for g in &m.groups {
        let bad = |why: String| BackupError::Image {
            file: g.file.clone(),
            why,
        };
        let path = dir.join(&g.file);
        let mut raw = BufReader::new(std::fs::File::open(&path).map_err(io(&path))?);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = raw.read(&mut buf).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            bytes += n as u64;
        }
        if bytes != g.bytes {
            return Err(bad(format!("{bytes} bytes, the manifest says {}", g.bytes)));
        }
        let sum = hex(&hash.finalize());
        if sum != g.sha256 {
            return Err(bad(format!(
                "SHA-256 {sum}, the manifest says {}",
                g.sha256
            )));
        }
        let mut frames = Frames::open(dir, &g.file)?;
        let (mut pairs, mut last): (u64, Option<Vec<u8>>) = (0, None);
        let mut records = Vec::new();
        while let Some(chunk) = frames.next()? {
            for (k, v) in chunk {
                if !hourcell_storage::keys::well_formed(&k) {
                    return Err(bad(format!("a key of unknown shape {k:02x?}")));
                }
                if last.as_ref().is_some_and(|l| *l >= k) {
                    return Err(bad("keys out of order".into()));
                }
                if k.first() == Some(&hourcell_storage::keys::AUDIT) {
                    let (r, _): (hourcell_storage::AuditRecord, _) =
                        bincode::serde::decode_from_slice(&v, bincode::config::standard())
                            .map_err(|e| bad(format!("an audit record does not decode: {e}")))?;
                    records.push(r);
                }
                last = Some(k);
                pairs += 1;
            }
        }
        if pairs != g.pairs {
            return Err(bad(format!("{pairs} pairs, the manifest says {}", g.pairs)));
        }
        audit_records += hourcell_storage::audit::verify_chain(&records)
            .map_err(|e| bad(format!("the audit chain does not verify: {e}")))?;
        total += pairs;
    }
    let v = Verified {
        groups: m.groups.len(),
        pairs: total,
        audit_records,
    };
    Ok((m, v))
}

fn verify_cmd(a: BackupVerifyArgs) -> Result<()> {
    let (m, v) = verify(&a.dir).map_err(|e| Failure::new(VERIFY_FAILED, e.to_string()))?;
    if a.format == Format::Json {
        let j = serde_json::json!({ "ok": true, "verified": v, "manifest": m });
        return print_stdout(&format!("{j}\n"));
    }
    print_stdout(&format!(
        "backup verified: {} group(s), {} pairs, {} audit records (chain intact), taken {} at raft index {}\n",
        v.groups,
        v.pairs,
        v.audit_records,
        m.created,
        m.groups.first().map_or(0, |g| g.applied_index)
    ))
}

/// A backup's shard images, read from its directory.
struct ShardFiles<'a> {
    dir: &'a Path,
    groups: Vec<&'a GroupEntry>,
}

impl hourcell_node::node::backup::ShardImages for ShardFiles<'_> {
    fn groups(&self) -> Vec<(u64, u64)> {
        self.groups
            .iter()
            .map(|g| (g.group, g.applied_index))
            .collect()
    }

    fn read(
        &mut self,
        group: u64,
        put: &mut dyn FnMut(
            hourcell_node::node::backup::Pairs,
        ) -> Result<(), hourcell_node::node::backup::RestoreError>,
    ) -> Result<(), hourcell_node::node::backup::RestoreError> {
        let source = |e: BackupError| hourcell_node::node::backup::RestoreError::Source {
            why: e.to_string(),
        };
        let g = self
            .groups
            .iter()
            .find(|g| g.group == group)
            .ok_or_else(|| hourcell_node::node::backup::RestoreError::Source {
                why: format!("no image of group {group}"),
            })?;
        let mut frames = Frames::open(self.dir, &g.file).map_err(source)?;
        while let Some(pairs) = frames.next().map_err(source)? {
            put(pairs)?;
        }
        Ok(())
    }
}

fn restore(a: BackupRestoreArgs) -> Result<()> {
    let (m, v) = verify(&a.from).map_err(|e| Failure::new(VERIFY_FAILED, e.to_string()))?;
    let (metas, shards): (Vec<&GroupEntry>, Vec<&GroupEntry>) =
        m.groups.iter().partition(|g| g.role == "meta");
    let [g] = metas.as_slice() else {
        return Err(BackupError::Manifest {
            path: a.from.join("manifest.json"),
            why: format!("{} metadata images (one expected)", metas.len()),
        }
        .into());
    };
    let cfg = hourcell_node::config::NodeConfig::load(&a.config)?;
    let mut frames = Frames::open(&a.from, &g.file)?;
    let mut files = ShardFiles {
        dir: &a.from,
        groups: shards.clone(),
    };
    let images: Option<&mut dyn hourcell_node::node::backup::ShardImages> = if shards.is_empty() {
        None
    } else {
        Some(&mut files)
    };
    hourcell_node::node::backup::restore_data_dir(
        &cfg,
        g.applied_index,
        &mut || {
            frames
                .next()
                .map_err(|e| hourcell_node::node::backup::RestoreError::Source {
                    why: e.to_string(),
                })
        },
        images,
    )?;
    let next = match &cfg.cluster {
        Some(c) if c.peers.len() > 1 => format!(
            "restore every other node of the new cluster ({} peers in the config) from the same \
             backup, then start them all without --join",
            c.peers.len()
        ),
        _ => "start the node".into(),
    };
    print_stdout(&format!(
        "restored {} pairs ({} audit records) at raft index {} into {}; {next}\n",
        v.pairs,
        v.audit_records,
        g.applied_index,
        cfg.data_dir.display()
    ))
}
