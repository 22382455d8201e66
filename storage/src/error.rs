//! The one error type of this crate.
//!
//! openraft's storage traits report failures as `std::io::Error` (it wraps them into its own
//! `StorageError` with the subject and verb it knows about), so every [`Error`] converts into an
//! `io::Error`. Damaged bytes on disk become `io::ErrorKind::InvalidData`, never a panic.

use std::io;

use crate::GroupId;

/// Everything that can go wrong while reading or writing pkd's raft state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled itself failed: the disk, the file lock, or sled's own corruption checks.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),

    /// A value could not be turned into postcard bytes.
    #[error("cannot encode {what} of raft group {group}: {source}")]
    Encode {
        /// What was being written, e.g. "log entry" or "vote".
        what: &'static str,
        /// The raft group the value belongs to.
        group: GroupId,
        /// postcard's reason.
        source: postcard::Error,
    },

    /// Bytes read back from disk are not a valid postcard encoding of the expected type.
    #[error("cannot decode {what} of raft group {group}: {source}")]
    Decode {
        /// What was being read, e.g. "log entry" or "vote".
        what: &'static str,
        /// The raft group the value belongs to.
        group: GroupId,
        /// postcard's reason.
        source: postcard::Error,
    },

    /// Bytes read back from disk do not have the framing this crate writes (a key of the wrong
    /// length, a truncated snapshot header, an unknown format version).
    #[error("corrupt {what} in raft group {group}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The raft group the value belongs to.
        group: GroupId,
        /// What exactly is wrong with it.
        detail: String,
    },

    /// The background flush thread is gone, so nothing can be made durable any more.
    #[error("the flush thread of the store has stopped")]
    FlusherStopped,
}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        match error {
            Error::Sled(sled_error) => io::Error::from(sled_error),
            Error::Decode { .. } | Error::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, error),
            Error::Encode { .. } => io::Error::new(io::ErrorKind::InvalidInput, error),
            Error::FlusherStopped => io::Error::new(io::ErrorKind::BrokenPipe, error),
        }
    }
}
