//! `--external fd[N][:NAME]` (dump, migrate) and `--inherit-fd fd[N]:NAME`
//! (restore, serve): fds shared with processes outside the dump, named on
//! the source and given a replacement on the destination (CRIU's
//! `--inherit-fd` convention).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::str::FromStr;

/// `fd[N]` or `fd[N]:NAME`: split into N and the name, if any.
fn parse_fd_spec(s: &str) -> std::result::Result<(i32, Option<String>), String> {
    let rest = s
        .strip_prefix("fd[")
        .ok_or_else(|| format!("{s:?}: expected fd[N] or fd[N]:NAME"))?;
    let (num, tail) = rest
        .split_once(']')
        .ok_or_else(|| format!("{s:?}: missing ']' after the fd number"))?;
    let fd: i32 = num
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("{s:?}: {num:?} is not an fd number"))?;
    match tail {
        "" => Ok((fd, None)),
        _ => match tail.strip_prefix(':') {
            Some("") | None => Err(format!("{s:?}: expected fd[N]:NAME")),
            Some(name) => Ok((fd, Some(name.to_string()))),
        },
    }
}

/// `--external fd[N][:NAME]`: the dumped process's fd N is shared with a
/// process outside the dump; restored from what the destination is given
/// under NAME (default: what the fd is, e.g. `pipe:[1234]`).
#[derive(Debug, Clone)]
pub struct ExternalFd {
    fd: i32,
    name: Option<String>,
}

impl FromStr for ExternalFd {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (fd, name) = parse_fd_spec(s)?;
        Ok(ExternalFd { fd, name })
    }
}

/// fd -> name, for `DumpOptions::external`; an fd without a name is
/// named by its link in /proc (`pipe:[INO]`, `socket:[INO]`).
pub fn external_fds(pid: i32, given: &[ExternalFd]) -> Result<BTreeMap<i32, String>> {
    let mut out = BTreeMap::new();
    for e in given {
        let name = match &e.name {
            Some(n) => n.clone(),
            None => std::fs::read_link(format!("/proc/{pid}/fd/{}", e.fd))
                .with_context(|| {
                    format!("--external fd[{}]: process {pid} has no fd {}", e.fd, e.fd)
                })?
                .to_string_lossy()
                .into_owned(),
        };
        if out.insert(e.fd, name).is_some() {
            bail!("--external fd[{}] is given twice", e.fd);
        }
    }
    Ok(out)
}

/// `--inherit-fd fd[N]:NAME`: this tern's own fd N replaces the image's
/// fd named NAME.
#[derive(Debug, Clone)]
pub struct InheritFd {
    fd: RawFd,
    name: String,
}

impl FromStr for InheritFd {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match parse_fd_spec(s)? {
            (fd, Some(name)) => Ok(InheritFd { fd, name }),
            (_, None) => Err(format!(
                "{s:?}: expected fd[N]:NAME (which image fd it replaces)"
            )),
        }
    }
}

/// name -> fd, for `RestoreOptions::inherit_fds`; each fd checked open.
pub fn inherit_fds(given: &[InheritFd]) -> Result<BTreeMap<String, RawFd>> {
    let mut out = BTreeMap::new();
    for i in given {
        if std::fs::symlink_metadata(format!("/proc/self/fd/{}", i.fd)).is_err() {
            bail!(
                "--inherit-fd fd[{}]:{}: tern has no fd {} open (give it one, e.g. {}>FILE or {}<&M in a shell)",
                i.fd,
                i.name,
                i.fd,
                i.fd,
                i.fd
            );
        }
        if out.insert(i.name.clone(), i.fd).is_some() {
            bail!("--inherit-fd: {:?} is given twice", i.name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_specs_parse_and_bad_ones_are_named() {
        assert_eq!(parse_fd_spec("fd[3]"), Ok((3, None)));
        assert_eq!(
            parse_fd_spec("fd[12]:pipe:[4242]"),
            Ok((12, Some("pipe:[4242]".into())))
        );
        for bad in ["3", "fd[x]", "fd[3", "fd[3]:", "fd[3]x", "fd[-1]"] {
            let e = parse_fd_spec(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!("fd[3]".parse::<InheritFd>().is_err());
        assert!("fd[3]:log".parse::<InheritFd>().is_ok());
    }
}
