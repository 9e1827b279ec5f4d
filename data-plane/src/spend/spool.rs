//! The spend spool: every batch of spend events is written here before it is sent, and deleted only once the
//! ledger acknowledged it, so neither a control-plane (or Postgres) outage nor a restart of this data plane loses
//! it. A file per batch, `<batch id>.pb` (the encoded `SpendBatch`; batch ids are UUIDv7, so names sort by age),
//! written to a temporary name, synced and renamed: a crash leaves whole batches or none.
//!
//! The spool is bounded (`GATEWAY_SPEND_SPOOL_MAX_BYTES`): when full, the data plane refuses new requests instead
//! of serving requests it could not account for (see `docs/spend.md`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_proto::v1;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spend spool {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A batch found in the spool at start.
pub struct Stored {
    pub batch: v1::SpendBatch,
    pub file: SpoolFile,
}

/// A batch's file and its size, to delete it once acknowledged.
#[derive(Debug, Clone)]
pub struct SpoolFile {
    pub path: PathBuf,
    pub bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: AtomicU64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
}

impl Spool {
    /// Open (creating) `dir` and read the batches left by an earlier run, oldest first. Unreadable files are renamed
    /// `*.corrupt` and kept for an operator, never deleted; leftover temporary files were never complete batches.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Vec<Stored>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
            } else if name.ends_with(".pb") {
                names.push(path);
            }
        }
        names.sort();
        let mut stored = Vec::new();
        let mut total = 0;
        for path in names {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // One unreadable file must not make the whole spool unusable: it stays for an operator.
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "an unreadable spend batch is left in the spool");
                    continue;
                }
            };
            match v1::SpendBatch::decode(bytes.as_slice()) {
                Ok(batch) => {
                    total += bytes.len() as u64;
                    stored.push(Stored { batch, file: SpoolFile { path, bytes: bytes.len() as u64 } });
                }
                Err(error) => {
                    let corrupt = path.with_extension("pb.corrupt");
                    tracing::error!(path = %path.display(), %error, "unreadable spend batch in the spool; kept as .corrupt");
                    std::fs::rename(&path, &corrupt).map_err(io(&path))?;
                }
            }
        }
        let spool = Spool { dir: dir.to_owned(), max_bytes, bytes: AtomicU64::new(total) };
        spool.publish();
        Ok((spool, stored))
    }

    /// Write `batch` durably (file data synced) before it is sent.
    pub fn write(&self, batch: &v1::SpendBatch) -> Result<SpoolFile, SpoolError> {
        let encoded = batch.encode_to_vec();
        let path = self.dir.join(format!("{}.pb", batch.batch_id));
        let temporary = self.dir.join(format!(".{}.tmp", batch.batch_id));
        let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(&encoded).map_err(io(&temporary))?;
        file.sync_data().map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        // The rename itself must survive a power loss, or the next start would find only a temporary file.
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.bytes.fetch_add(encoded.len() as u64, Ordering::Relaxed);
        self.publish();
        Ok(SpoolFile { path, bytes: encoded.len() as u64 })
    }

    /// Delete an acknowledged batch.
    pub fn remove(&self, file: &SpoolFile) {
        match std::fs::remove_file(&file.path) {
            Ok(()) => {
                self.bytes.fetch_sub(file.bytes.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
                self.publish();
            }
            // Sent again at the next start, and counted once by the ledger's idempotency.
            Err(error) => {
                tracing::warn!(path = %file.path.display(), %error, "could not delete an acknowledged spend batch")
            }
        }
    }

    /// Stop counting a batch whose file was moved aside.
    pub fn forget(&self, file: &SpoolFile) {
        self.bytes.fetch_sub(file.bytes.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.publish();
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// No room for more batches (the reporter refuses requests on its own count, `Reporter::is_full`).
    #[cfg_attr(not(test), expect(dead_code, reason = "the reporter enforces the limit on what it queues"))]
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    fn publish(&self) {
        metrics::gauge!("gateway_spend_spool_bytes").set(self.bytes() as f64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn batch(id: &str, events: usize) -> v1::SpendBatch {
        v1::SpendBatch {
            node_id: "n".to_owned(),
            batch_id: id.to_owned(),
            events: (0..events).map(|i| v1::SpendEvent { id: format!("e{i}"), ..v1::SpendEvent::default() }).collect(),
        }
    }

    #[test]
    fn batches_survive_a_restart_in_order_and_corrupt_files_are_kept() {
        let dir =
            std::env::temp_dir().join(format!("spool-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (spool, left) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(left.is_empty());
        let second = spool.write(&batch("0192-b", 2)).unwrap();
        spool.write(&batch("0192-a", 1)).unwrap();
        let third = spool.write(&batch("0192-c", 3)).unwrap();
        std::fs::write(dir.join("0192-d.pb"), b"\xff\xff not protobuf").unwrap();
        std::fs::write(dir.join(".0192-e.tmp"), b"half").unwrap();
        spool.remove(&third);
        assert_eq!(spool.bytes(), second.bytes + batch("0192-a", 1).encoded_len() as u64);

        let (reopened, left) = Spool::open(&dir, 1 << 20).unwrap();
        let ids: Vec<&str> = left.iter().map(|s| s.batch.batch_id.as_str()).collect();
        assert_eq!(ids, ["0192-a", "0192-b"]);
        assert_eq!(left[1].batch.events.len(), 2);
        assert_eq!(reopened.bytes(), spool.bytes());
        assert!(dir.join("0192-d.pb.corrupt").exists(), "never deleted");
        assert!(!dir.join(".0192-e.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_spool_says_so() {
        let dir = std::env::temp_dir().join(format!("spool-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (spool, _) = Spool::open(&dir, 64).unwrap();
        assert!(!spool.is_full());
        let file = spool.write(&batch("0192-a", 10)).unwrap();
        assert!(spool.is_full());
        spool.remove(&file);
        assert!(!spool.is_full());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
