//! The last good snapshot on local disk (static stability): written atomically after every successful swap, read
//! at start. The file holds provider secrets, so it is created readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use gateway_proto::v1;
use prost::Message;

pub const FILE_NAME: &str = "last-good.snapshot.pb";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a snapshot: {source}")]
    Decode { path: PathBuf, source: prost::DecodeError },
}

pub fn read(path: &Path) -> Result<v1::Snapshot, PersistError> {
    let bytes = std::fs::read(path).map_err(|source| PersistError::Io { path: path.to_owned(), source })?;
    v1::Snapshot::decode(bytes.as_slice()).map_err(|source| PersistError::Decode { path: path.to_owned(), source })
}

/// Write `snapshot` to `dir/FILE_NAME` through a temporary file and a rename, so a crash never leaves half a file.
pub fn write(dir: &Path, snapshot: &v1::Snapshot) -> Result<PathBuf, PersistError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PersistError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(FILE_NAME);
    let temporary = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(io(&temporary))?;
    file.write_all(&snapshot.encode_to_vec()).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, &target).map_err(io(&target))?;
    Ok(target)
}
