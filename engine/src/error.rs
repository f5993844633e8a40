use std::io;

/// Errors of the source side; each names the process and what failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("process {pid}: no such process")]
    NoProcess { pid: i32 },
    #[error("process {pid}: {what}")]
    Sys {
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("process {pid} cannot be dumped: {reason}")]
    Unsupported { pid: i32, reason: String },
    /// A process of its tree exited while tern was stopping the tree (a
    /// stop tries again a few times before it reports this).
    #[error("process {pid} cannot be dumped: {reason}")]
    TreeChanging { pid: i32, reason: String },
    #[error(transparent)]
    Wire(#[from] tern_wire::WireError),
    /// A dirty-page tracker cannot work on this kernel or for this process.
    #[error("process {pid}: the {tracker} tracker is not available: {reason}")]
    TrackerUnavailable {
        pid: i32,
        tracker: &'static str,
        reason: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("network: {0}")]
    Net(#[from] tern_wire::net::NetError),
    /// A migration failed; the program still runs on this machine.
    #[error("migration of process {pid} failed, it keeps running here: {what}")]
    Migration { pid: i32, what: String },
    /// The outcome of a migration is not known (the link failed after the
    /// destination was told to resume): the program is left stopped here.
    #[error("process {pid}: {what}")]
    CommitUnknown { pid: i32, what: String },
    /// Post-copy failed after the program resumed at the destination: it
    /// is lost (see `migrate` docs: the risk every post-copy system runs).
    #[error("migration of process {pid} failed during post-copy; the program is lost: {what}")]
    PostCopyLost { pid: i32, what: String },
    #[error("process {pid}: pending migration record: {what}")]
    BadRecord { pid: i32, what: String },
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl From<tern_sys::Error> for EngineError {
    fn from(e: tern_sys::Error) -> EngineError {
        match e {
            tern_sys::Error::NoProcess { pid } => EngineError::NoProcess { pid },
            tern_sys::Error::Sys { pid, what, source } => EngineError::Sys { pid, what, source },
            tern_sys::Error::Unsupported { pid, reason } => {
                EngineError::Unsupported { pid, reason }
            }
            tern_sys::Error::Internal(what) => EngineError::Internal(what),
        }
    }
}

/// Attach "process PID: WHAT" context to an `io::Result`.
pub trait Context<T> {
    fn ctx(self, pid: i32, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, pid: i32, what: impl FnOnce() -> String) -> Result<T> {
        Ok(tern_sys::Context::ctx(self, pid, what)?)
    }
}

impl<T> Context<T> for std::result::Result<T, procfs::ProcError> {
    fn ctx(self, pid: i32, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| match e {
            procfs::ProcError::NotFound(_) => EngineError::NoProcess { pid },
            other => EngineError::Sys {
                pid,
                what: what(),
                source: io::Error::other(other.to_string()),
            },
        })
    }
}
