//! The kinds of process state tern moves, each with both of its sides in
//! one module: how the source captures it into the image (`tern_wire`) and
//! how the destination puts it back. Both `tern-engine` and
//! `tern-restorer` use these; the kernel calls are `tern_sys`'s.

#![deny(unsafe_code)]

pub mod cgroups;
pub mod creds;
pub mod files;
pub mod mounts;
pub mod namespaces;
pub mod regs;
pub mod seccomp;
pub mod sockets;
