//! tern's source side: attach to a running process with ptrace, read its
//! state from /proc and from syscalls run inside it, copy its memory, and
//! write an image (see `tern_wire`).
//!
//! Kernel-facing code (and every `unsafe` block) lives in `tern_sys`, which
//! the restorer uses too.

#![deny(unsafe_code)]

mod core_state;
pub mod dump;
pub mod error;
mod files;
pub mod migrate;
mod mm;
pub mod pages;
pub mod pagewriter;
pub mod pending;
pub mod policy;
pub mod precopy;
pub mod seize;
pub mod track;
pub mod tree;

pub use dump::{dump, pre_dump, DumpOptions, DumpStats};
pub use error::{EngineError, Result};
