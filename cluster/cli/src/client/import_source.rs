//! Where `hourcell import` reads from: a file or stdin (`-`), holding CSV,
//! gzip'd CSV or Parquet. The content decides (the `PAR1` and gzip magic
//! numbers), then the name (`.parquet`, `.gz`), so that a renamed or piped
//! file still imports.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why the input could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// What the input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Csv,
    GzipCsv,
    Parquet,
}

const PARQUET_MAGIC: &[u8] = b"PAR1";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// The encoding of an input whose first bytes are `head`, named `name`.
pub fn detect(head: &[u8], name: &str) -> Encoding {
    let name = name.to_ascii_lowercase();
    if head.starts_with(PARQUET_MAGIC) {
        Encoding::Parquet
    } else if head.starts_with(GZIP_MAGIC) {
        Encoding::GzipCsv
    } else if head.is_empty() && name.ends_with(".parquet") {
        // An empty file named .parquet: let the Parquet reader say why.
        Encoding::Parquet
    } else {
        Encoding::Csv
    }
}

/// Counts the bytes read through it, for the progress bar (compressed
/// bytes for gzip, so the bar runs against the file's size).
pub struct Counting<R> {
    inner: R,
    pub read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// An opened input.
pub enum Source {
    /// CSV text (decompressed when it was gzip'd), the bytes of the file
    /// read so far, and the file's size when known.
    Csv {
        reader: Box<dyn Read + Send>,
        read: Arc<AtomicU64>,
        size: Option<u64>,
    },
    /// A Parquet file (read at random, so stdin is read into memory first).
    ParquetFile(File),
    ParquetBytes(bytes::Bytes),
}

/// Opens `path` (`-`: stdin) and decides what it holds.
pub fn open(path: &Path) -> Result<Source, SourceError> {
    let shown = path.display().to_string();
    let name = path
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let read_err = |source| SourceError::Read {
        path: shown.clone(),
        source,
    };
    let (raw, size): (Box<dyn Read + Send>, Option<u64>) = if path == Path::new("-") {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(path).map_err(|source| SourceError::Open {
            path: shown.clone(),
            source,
        })?;
        let size = f.metadata().ok().map(|m| m.len());
        let mut head = [0u8; 4];
        let n = read_head(&f, &mut head).map_err(read_err)?;
        if detect(&head[..n], &name) == Encoding::Parquet {
            return Ok(Source::ParquetFile(f));
        }
        (Box::new(f), size)
    };
    let read = Arc::new(AtomicU64::new(0));
    let mut buffered = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: raw,
            read: read.clone(),
        },
    );
    let head = buffered.fill_buf().map_err(read_err)?.to_vec();
    match detect(&head, &name) {
        Encoding::Parquet => {
            let mut all = Vec::new();
            buffered.read_to_end(&mut all).map_err(read_err)?;
            Ok(Source::ParquetBytes(all.into()))
        }
        Encoding::GzipCsv => Ok(Source::Csv {
            reader: Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::bufread::MultiGzDecoder::new(buffered),
            )),
            read,
            size,
        }),
        Encoding::Csv => Ok(Source::Csv {
            reader: Box::new(buffered),
            read,
            size,
        }),
    }
}

/// Reads up to `head.len()` bytes from the start of `f` without moving
/// its cursor.
fn read_head(f: &File, head: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    let mut n = 0;
    while n < head.len() {
        match f.read_at(&mut head[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_decides_then_the_name() {
        assert_eq!(detect(b"PAR1\x15", "events.csv"), Encoding::Parquet);
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0], "events.csv"), Encoding::GzipCsv);
        assert_eq!(detect(b"person,time", "events.parquet"), Encoding::Csv);
        assert_eq!(detect(b"", "e.parquet"), Encoding::Parquet);
        assert_eq!(detect(b"person,time", "-"), Encoding::Csv);
    }
}
