//! "Edge servers" on one machine for `tern demo` and `tern bench`: two
//! network namespaces joined by a veth pair (root only), optionally shaped
//! with `tc netem`; and helpers to run the programs involved.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Two network namespaces joined by veth, removed on drop.
pub struct Edges {
    pub names: [String; 2],
    pub addr: [&'static str; 2],
    veth: [String; 2],
}

/// Run an iproute2 tool (`ip`, `tc`); its stderr becomes the error.
fn iproute2<S: AsRef<str>>(tool: &str, args: &[S]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new(tool)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {tool} (iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    iproute2("ip", args)
}

impl Edges {
    /// Namespaces `tern-TAG-PID-a`/`-b`, at 10.78.0.1 and 10.78.0.2.
    pub fn create(tag: &str) -> Result<Edges> {
        let pid = std::process::id();
        let names = [format!("tern-{tag}-{pid}-a"), format!("tern-{tag}-{pid}-b")];
        // Interface names are limited to 15 bytes.
        let veth = [
            format!("tv{}a", pid % 1_000_000),
            format!("tv{}b", pid % 1_000_000),
        ];
        let edges = Edges {
            names: names.clone(),
            addr: ["10.78.0.1", "10.78.0.2"],
            veth: veth.clone(),
        };
        let [a, b] = &names;
        let [va, vb] = &veth;
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&[
            "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b,
        ])?;
        ip(&["-n", a, "addr", "add", "10.78.0.1/24", "dev", va])?;
        ip(&["-n", b, "addr", "add", "10.78.0.2/24", "dev", vb])?;
        for (ns, dev) in [(a, va), (b, vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(edges)
    }

    /// Shape both directions of the link: netem with `mbit` of bandwidth
    /// and half of `rtt_ms` of delay each way; where the kernel has no
    /// netem (`CONFIG_NET_SCH_NETEM`), a rate alone is set with tbf, and a
    /// delay is refused.
    /// Returns how the link was shaped, for humans.
    pub fn shape(&self, mbit: Option<u64>, rtt_ms: Option<f64>) -> Result<String> {
        if mbit.is_none() && rtt_ms.is_none() {
            return Ok("unshaped veth".into());
        }
        let mut how = String::new();
        for k in 0..2 {
            let mut netem: Vec<String> = vec!["netem".into()];
            if let Some(rtt) = rtt_ms {
                netem.extend(["delay".into(), format!("{}ms", rtt / 2.0)]);
            }
            if let Some(m) = mbit {
                // Queue room for the bandwidth-delay product at this rate.
                netem.extend([
                    "rate".into(),
                    format!("{m}mbit"),
                    "limit".into(),
                    "100000".into(),
                ]);
            }
            match self.tc(k, &netem) {
                Ok(()) => {
                    how = format!(
                        "veth shaped with netem: {}, RTT {}",
                        mbit.map_or("no rate limit".into(), |m| format!("{m} Mbit/s")),
                        rtt_ms.map_or("0 ms".into(), |r| format!("{r} ms"))
                    );
                    continue;
                }
                Err(e) if !e.to_string().contains("qdisc kind is unknown") => return Err(e),
                Err(_) => {}
            }
            let Some(m) = mbit.filter(|_| rtt_ms.is_none()) else {
                bail!(
                    "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): a round-trip time cannot be emulated here (--rtt-ms)"
                );
            };
            let tbf: Vec<String> = [
                "tbf",
                "rate",
                &format!("{m}mbit"),
                "burst",
                "256kb",
                "latency",
                "100ms",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            self.tc(k, &tbf)?;
            how = format!(
                "veth shaped with tbf to {m} Mbit/s (no netem in this kernel: no added delay)"
            );
        }
        Ok(how)
    }

    fn tc(&self, k: usize, qdisc: &[String]) -> Result<()> {
        let mut args: Vec<String> = [
            "-n",
            &self.names[k],
            "qdisc",
            "add",
            "dev",
            &self.veth[k],
            "root",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(qdisc.iter().cloned());
        iproute2("tc", &args)
    }

    /// `program` run in namespace `k` (network namespace only: `ip netns
    /// exec` would also give it a mount namespace, which tern refuses).
    pub fn command(&self, k: usize, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.names[k]))
            .arg(program);
        c
    }
}

impl Drop for Edges {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A child process killed on drop (by pid: only what tern started).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tern keygen --out key` unless `key` exists.
pub fn keygen(exe: &Path, key: &Path) -> Result<()> {
    if key.exists() {
        return Ok(());
    }
    let st = Command::new(exe)
        .args(["keygen", "--out"])
        .arg(key)
        .stderr(Stdio::null())
        .status()
        .context("run tern keygen")?;
    if !st.success() {
        bail!("tern keygen failed");
    }
    Ok(())
}

/// Start `cmd` (a `tern` command line, possibly inside a namespace) as
/// `tern serve --once --listen LISTEN --key KEY`, its output in
/// `dir/serve.log`; returns once it listens, with the address it bound.
pub fn start_serve(cmd: Command, key: &Path, listen: &str, dir: &Path) -> Result<(Child, String)> {
    start_serve_with(cmd, key, listen, dir, &["--once"])
}

/// [`start_serve`] with `extra` arguments instead of `--once`.
pub fn start_serve_with(
    mut cmd: Command,
    key: &Path,
    listen: &str,
    dir: &Path,
    extra: &[&str],
) -> Result<(Child, String)> {
    let ready = dir.join("serve.addr");
    let _ = std::fs::remove_file(&ready);
    let log = dir.join("serve.log");
    let serve = Child(
        tern_sys::child::only_stdio(
            cmd.arg("serve")
                .args(extra)
                .args(["--listen", listen, "--key"])
                .arg(key)
                .arg("--ready-file")
                .arg(&ready)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?),
        )
        .spawn()
        .context("start tern serve")?,
    );
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            bail!("tern serve did not start; see {}", log.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&ready)?.trim().to_string();
    Ok((serve, addr))
}

/// Start `cmd` (a `tern` command line) as `tern demo-workload` with
/// `mib` MiB of state and `dirty_mbps`, logging its heartbeats to `log`.
pub fn start_workload(cmd: Command, mib: u64, dirty_mbps: f64, log: &Path) -> Result<Child> {
    start_workload_writing(cmd, mib, dirty_mbps, false, log)
}

/// [`start_workload`], its rewrites in address order if `sequential`.
pub fn start_workload_writing(
    mut cmd: Command,
    mib: u64,
    dirty_mbps: f64,
    sequential: bool,
    log: &Path,
) -> Result<Child> {
    cmd.arg("demo-workload");
    if sequential {
        cmd.arg("--sequential");
    }
    let child = tern_sys::child::only_stdio(
        cmd.arg("--mib")
            .arg(mib.to_string())
            .arg("--dirty-mbps")
            .arg(dirty_mbps.to_string())
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()
    .context("start the sample program")?;
    Ok(Child(child))
}
