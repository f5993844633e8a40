//! tern's source side: attach to a running process with ptrace, read its
//! state from /proc and from syscalls run inside it, copy its memory, and
//! write an image (see `tern_wire`).
//!
//! Kernel-facing unsafe code lives in [`sys`]; the restorer uses it too.

pub mod check;
pub mod dump;
pub mod error;
pub mod freezer;
pub mod migrate;
pub mod pagewriter;
pub mod pending;
pub mod policy;
pub mod precopy;
pub mod proc;
pub mod seize;
pub mod sockets;
pub mod sys;
pub mod track;
pub mod tree;

pub use dump::{dump, pre_dump, DumpOptions, DumpStats};
pub use error::{EngineError, Result};
