use std::io;

/// Errors of the kernel layer that need more than an errno: each names the
/// process and what failed. The engine and the restorer map them into
/// their own errors variant for variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid}: no such process")]
    NoProcess { pid: i32 },
    #[error("process {pid}: {what}")]
    Sys {
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The process (or this machine) has something tern cannot handle.
    #[error("process {pid}: {reason}")]
    Unsupported { pid: i32, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach "process PID: WHAT" context to an `io::Result` (ESRCH becomes
/// [`Error::NoProcess`]).
pub trait Context<T> {
    fn ctx(self, pid: i32, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, pid: i32, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                Error::NoProcess { pid }
            } else {
                Error::Sys {
                    pid,
                    what: what(),
                    source,
                }
            }
        })
    }
}
