//! Packet locks: nftables tables (family inet, tern's own) that drop every
//! packet of some TCP connections in one network namespace while those
//! connections are between two machines. Runs `nft` (Debian package
//! nftables) through `nsenter` for another namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

/// nftables rules (a table of family inet of their own) that drop every
/// packet of some TCP connections in one network namespace, in and out, at
/// the earliest hook (priority raw): while a connection is between two
/// machines neither kernel may answer its peer (an ACK of data the image
/// does not hold, or a reset from a socket not there yet).
#[derive(Debug)]
pub struct NetLock {
    table: String,
    /// The namespace, held open; `None`: tern's own.
    netns: Option<std::fs::File>,
    removed: bool,
}

/// A path naming `netns` for `nsenter` while tern holds it open.
fn netns_path(netns: Option<&std::fs::File>) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    netns.map(|f| PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd())))
}

fn nft_addr(ip: IpAddr) -> (&'static str, String) {
    match ip {
        IpAddr::V4(a) => ("ip", a.to_string()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            // A v4-mapped address travels as IPv4.
            Some(v4) => ("ip", v4.to_string()),
            None => ("ip6", a.to_string()),
        },
    }
}

/// Start `nft -f -` (in `netns`) on `script`.
fn spawn_nft(netns: Option<&Path>, script: &str) -> io::Result<std::process::Child> {
    use std::io::Write;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("nft");
            c
        }
        None => std::process::Command::new("nft"),
    };
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                "nft not found: TCP connections need nftables (Debian package nftables) to be locked during the move",
            )
        } else {
            e
        }
    })?;
    // A few hundred bytes at most: within the pipe's buffer, so this write
    // does not wait for nft.
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(script.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    Ok(child)
}

/// How long one `nft` run may take (it takes ~5-15 ms here): a hung one
/// is killed, so that no restore or migration waits on it for good.
const NFT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

fn nft_result(mut child: std::process::Child) -> io::Result<()> {
    let t0 = std::time::Instant::now();
    // Polled (its stderr is a few lines at most: the pipe cannot fill).
    while child.try_wait()?.is_none() {
        if t0.elapsed() >= NFT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nft did not finish within {NFT_DEADLINE:?} (killed)"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn run_nft(netns: Option<&Path>, script: &str) -> io::Result<()> {
    nft_result(spawn_nft(netns, script)?)
}

impl NetLock {
    /// Drop the packets of `conns` (local, peer) in network namespace
    /// `netns` (`None`: tern's own). `prefix` starts the table's name.
    pub fn apply(
        netns: Option<std::fs::File>,
        prefix: &str,
        conns: &[(SocketAddr, SocketAddr)],
    ) -> io::Result<NetLock> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let table = format!("{prefix}_{nanos:09}");
        let mut input = String::new();
        let mut output = String::new();
        for (local, peer) in conns {
            let (fam, l) = nft_addr(local.ip());
            let (_, p) = nft_addr(peer.ip());
            let (lp, pp) = (local.port(), peer.port());
            input.push_str(&format!(
                "    {fam} saddr {p} {fam} daddr {l} tcp sport {pp} tcp dport {lp} drop\n"
            ));
            output.push_str(&format!(
                "    {fam} saddr {l} {fam} daddr {p} tcp sport {lp} tcp dport {pp} drop\n"
            ));
        }
        let script = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority raw; policy accept;\n{input}  }}\n  chain output {{\n    type filter hook output priority raw; policy accept;\n{output}  }}\n}}\n"
        );
        run_nft(netns_path(netns.as_ref()).as_deref(), &script)?;
        debug!(table, connections = conns.len(), "network lock applied");
        Ok(NetLock {
            table,
            netns,
            removed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// Lift the lock.
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        remove_table(netns_path(self.netns.as_ref()).as_deref(), &self.table)
    }

    /// Start lifting the lock: removing a table costs nftables ~15 ms (an
    /// RCU grace period) plus starting `nft`, which can overlap other
    /// work. `nft` is started here, so it runs to the end even if tern
    /// exits; join the handle for the outcome.
    pub fn remove_in_background(mut self) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
        // On failure `self` is dropped, which tries once more.
        let h = start_removing_table(netns_path(self.netns.as_ref()).as_deref(), &self.table)?;
        self.removed = true;
        Ok(h)
    }

    /// Leave the lock in place; returns its table's name.
    pub fn keep(mut self) -> String {
        self.removed = true;
        std::mem::take(&mut self.table)
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_table(netns_path(self.netns.as_ref()).as_deref(), &self.table) {
                warn!(table = self.table, "removing the network lock: {e}");
            }
        }
    }
}

/// Start deleting nftables table `name` (family inet) in `netns`; `nft`
/// is started here (it runs to the end even if tern exits), join the
/// handle for the outcome.
pub fn start_removing_table(
    netns: Option<&Path>,
    name: &str,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    checked_table(name)?;
    let child = spawn_nft(netns, &format!("delete table inet {name}\n"))?;
    Ok(std::thread::spawn(move || nft_result(child)))
}

fn checked_table(name: &str) -> io::Result<()> {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a tern lock table name"),
        ))
    }
}

/// Delete nftables table `name` (family inet) in `netns`.
pub fn remove_table(netns: Option<&Path>, name: &str) -> io::Result<()> {
    checked_table(name)?;
    run_nft(netns, &format!("delete table inet {name}\n"))
}
