//! Stop policies for the pre-copy loop: after each round, decide whether to
//! run another round or to freeze the process and send the final delta.
//!
//! Pure logic over what the rounds measured ([`RoundInfo`]): no kernel
//! access, so every rule is unit-tested here.
//!
//! | spec | stops when | bounded by |
//! |---|---|---|
//! | `paper` | the last two incremental rounds hash equal (Kaur & Kaur 2020) | `max_rounds`, `time_limit_ms` |
//! | `adaptive` | an empty round; the predicted final delta fits the downtime target; or the dirty set stopped shrinking | `max_rounds`, `time_limit_ms` |
//! | `rounds:N` | N rounds are done | nothing else |
//! | `hybrid` | as `adaptive`; and when pages are dirtied faster than the link carries them. Unless the final delta fits the target (or the program is idle), the delta is then sent by post-copy | `max_rounds`, `time_limit_ms` |
//! | `postcopy` | after round 0; everything written since is sent by post-copy | nothing else |
//!
//! [`StopPolicy::post_copy`] says, for the reason a policy stopped, whether
//! the final delta goes by post-copy (the program resumes at the destination
//! at once and its last-written pages follow) instead of in the frozen phase.
//!
//! # Calling convention
//!
//! The loop calls [`StopPolicy::decide`] after every round with *all* rounds
//! so far, oldest first: `rounds[0]` is the full copy (round 0), every later
//! entry an increment holding the pages dirtied since the round before.
//! `elapsed_ms` is the wall time since round 0 started. On
//! [`Decision::Stop`] the loop freezes the process and sends the final
//! increment; on [`Decision::Continue`] it runs another round.

use std::fmt;
use std::str::FromStr;

/// What one pre-copy round measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RoundInfo {
    /// 0 for the full copy, then 1, 2, …
    pub round: u32,
    /// Pages the round copied (for round 0: every page with data).
    pub dirty_pages: u64,
    /// Bytes the round copied.
    pub dirty_bytes: u64,
    /// xxh3 of the round's content.
    pub hash: u64,
    /// Time to read and send the round, in ms.
    pub copy_ms: f64,
    /// Wall time since the previous round started, in ms: the window in
    /// which this round's pages were dirtied.
    pub interval_ms: f64,
}

/// What the loop should do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Run another pre-copy round.
    Continue,
    /// Freeze the process and send the final delta.
    Stop(StopReason),
}

/// Why a policy stopped the pre-copy loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopReason {
    /// The last two incremental rounds hashed equal (the paper's rule).
    HashesEqual,
    /// The predicted downtime is within the target.
    FitsDowntimeTarget {
        /// Predicted time to send the final delta, in ms.
        predicted_ms: f64,
    },
    /// The dirty set stopped shrinking: more rounds would not lower the
    /// final delta, only spend bandwidth.
    NotShrinking,
    /// `max_rounds` rounds were run.
    MaxRounds,
    /// `time_limit_ms` passed.
    TimeLimit,
    /// `rounds:N`: the N requested rounds were run.
    RoundsDone,
    /// The last round found no dirty page.
    Idle,
    /// `hybrid`: pages are dirtied faster than the link carries them, so
    /// pre-copy cannot converge.
    DirtiedFasterThanLink { dirty_mb_s: f64, link_mb_s: f64 },
    /// `postcopy`: round 0 is done.
    PostCopyAfterRoundZero,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::HashesEqual => write!(
                f,
                "the last two rounds hashed equal, so the process looks idle (the paper's rule)"
            ),
            StopReason::FitsDowntimeTarget { predicted_ms } => write!(
                f,
                "the final delta is predicted to take {predicted_ms:.3} ms to send, within the downtime target"
            ),
            StopReason::NotShrinking => write!(
                f,
                "the dirty set stopped shrinking over the last {SHRINK_WINDOW} rounds, so more rounds would not lower the downtime"
            ),
            StopReason::MaxRounds => write!(f, "the maximum number of pre-copy rounds was reached"),
            StopReason::TimeLimit => write!(f, "the pre-copy time limit was reached"),
            StopReason::RoundsDone => write!(f, "the requested number of pre-copy rounds is done"),
            StopReason::Idle => write!(f, "the last round found no dirty pages, so the process is idle"),
            StopReason::DirtiedFasterThanLink { dirty_mb_s, link_mb_s } => write!(
                f,
                "pages are dirtied at {dirty_mb_s:.1} MB/s, faster than the link carries them ({link_mb_s:.1} MB/s): pre-copy cannot converge"
            ),
            StopReason::PostCopyAfterRoundZero => write!(f, "post-copy starts after round 0"),
        }
    }
}

/// Decides, after each round, whether to stop pre-copy.
///
/// `Send` so the loop may run on any thread.
pub trait StopPolicy: Send + std::fmt::Debug {
    /// The policy's spec, as accepted by [`PolicySpec::from_str`].
    fn name(&self) -> String;
    /// `rounds`: every round so far, oldest first (`rounds[0]` is the full
    /// copy); `elapsed_ms`: wall time since round 0 started.
    fn decide(&mut self, rounds: &[RoundInfo], elapsed_ms: f64) -> Decision;
    /// Whether, having stopped for `reason`, the final delta goes by
    /// post-copy. Pre-copy-only policies never do.
    fn post_copy(&self, _reason: &StopReason) -> bool {
        false
    }
    /// The rate the link carried a round at, in bytes/ms, as the migration
    /// measured it (pre-copy's own copy times measure only the local read).
    fn observe_link(&mut self, _bytes_per_ms: f64) {}
}

/// Which policy to build: `paper`, `adaptive`, `rounds:N` (N ≥ 1),
/// `hybrid` or `postcopy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicySpec {
    Paper,
    Adaptive,
    Rounds(u32),
    Hybrid,
    PostCopy,
}

impl PolicySpec {
    /// Whether the policy may end in post-copy (which only a migration,
    /// not an image on disk, can do).
    pub fn may_post_copy(&self) -> bool {
        matches!(self, PolicySpec::Hybrid | PolicySpec::PostCopy)
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::Paper => write!(f, "paper"),
            PolicySpec::Adaptive => write!(f, "adaptive"),
            PolicySpec::Rounds(n) => write!(f, "rounds:{n}"),
            PolicySpec::Hybrid => write!(f, "hybrid"),
            PolicySpec::PostCopy => write!(f, "postcopy"),
        }
    }
}

/// A stop policy spec that does not parse; names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad stop policy {input:?}: {reason}")]
pub struct ParsePolicyError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for PolicySpec {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePolicyError {
            input: s.to_string(),
            reason,
        };
        match s {
            "paper" => Ok(PolicySpec::Paper),
            "adaptive" => Ok(PolicySpec::Adaptive),
            "hybrid" => Ok(PolicySpec::Hybrid),
            "postcopy" => Ok(PolicySpec::PostCopy),
            _ => {
                let Some(count) = s.strip_prefix("rounds:") else {
                    return Err(err(
                        "expected paper, adaptive, rounds:N, hybrid or postcopy",
                    ));
                };
                // Digits only: u32::from_str would also take "+3".
                if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("N in rounds:N must be a whole number of rounds"));
                }
                match count.parse::<u32>() {
                    Ok(0) => Err(err("N in rounds:N must be at least 1")),
                    Ok(n) => Ok(PolicySpec::Rounds(n)),
                    Err(_) => Err(err("N in rounds:N is too large")),
                }
            }
        }
    }
}

/// Bounds and targets shared by the policies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most pre-copy rounds, round 0 included (0: stop at once, i.e.
    /// stop-and-copy). Not applied by `rounds:N`.
    pub max_rounds: u32,
    /// Longest pre-copy phase, in ms (infinite: no limit). Not applied by
    /// `rounds:N`.
    pub time_limit_ms: f64,
    /// `adaptive`: the downtime the final delta should fit, in ms.
    pub target_downtime_ms: f64,
    /// `adaptive`: the link's rate, in bytes/ms; `None` (or a value that is
    /// not a positive number): measure it from the rounds' copy times.
    pub link_bytes_per_ms: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rounds: 30,
            time_limit_ms: 30_000.0,
            target_downtime_ms: 10.0,
            link_bytes_per_ms: None,
        }
    }
}

/// Build the policy `spec` names.
pub fn build(spec: &PolicySpec, limits: &Limits) -> Box<dyn StopPolicy> {
    match *spec {
        PolicySpec::Paper => Box::new(PaperPolicy::new(*limits)),
        PolicySpec::Adaptive => Box::new(AdaptivePolicy::new(*limits)),
        PolicySpec::Rounds(n) => Box::new(RoundsPolicy::new(n)),
        PolicySpec::Hybrid => Box::new(HybridPolicy::new(*limits)),
        PolicySpec::PostCopy => Box::new(PostCopyPolicy),
    }
}

/// The bounds every policy but `rounds:N` obeys.
fn check_limits(limits: &Limits, rounds: &[RoundInfo], elapsed_ms: f64) -> Decision {
    if rounds.len() >= limits.max_rounds as usize {
        Decision::Stop(StopReason::MaxRounds)
    } else if elapsed_ms >= limits.time_limit_ms {
        Decision::Stop(StopReason::TimeLimit)
    } else {
        Decision::Continue
    }
}

/// `paper`: the reference rule of Kaur & Kaur (2020): stop when the last
/// two incremental rounds (`rounds[1..]`, never the full copy) hash equal,
/// taken as "the process is idle enough".
///
/// A busy writer never converges under this rule (the paper's own
/// conclusion): its increments keep changing, so only the bounds stop it,
/// with [`StopReason::MaxRounds`] or [`StopReason::TimeLimit`], and the final
/// delta is then whatever the last window dirtied. Conversely, a process
/// that rewrites the same pages with the same values passes the rule while
/// busy.
#[derive(Debug, Clone)]
pub struct PaperPolicy {
    limits: Limits,
}

impl PaperPolicy {
    pub fn new(limits: Limits) -> Self {
        PaperPolicy { limits }
    }
}

impl StopPolicy for PaperPolicy {
    fn name(&self) -> String {
        PolicySpec::Paper.to_string()
    }

    fn decide(&mut self, rounds: &[RoundInfo], elapsed_ms: f64) -> Decision {
        // rounds[0] is the full copy: only increments are compared.
        if let [.., prev, last] = rounds.get(1..).unwrap_or_default() {
            if prev.hash == last.hash {
                return Decision::Stop(StopReason::HashesEqual);
            }
        }
        check_limits(&self.limits, rounds, elapsed_ms)
    }
}

/// Weight of the newest sample in the rate EWMAs: 0.5 follows a changing
/// writer within a couple of rounds while smoothing one noisy round.
const EWMA_WEIGHT: f64 = 0.5;
/// Rounds compared by the "not shrinking" test.
const SHRINK_WINDOW: usize = 3;
/// A round "shrank" if it copied less than this fraction of the round before
/// (i.e. fell by more than 10%).
const SHRINK_FACTOR: f64 = 0.9;

/// What [`AdaptivePolicy`] predicts from the rounds so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// EWMA of `dirty_bytes / interval_ms` over the increments.
    pub dirty_bytes_per_ms: f64,
    /// The link rate if given, else EWMA of `dirty_bytes / copy_ms`.
    pub transfer_bytes_per_ms: f64,
    /// `dirty_bytes_per_ms × last.copy_ms`.
    pub final_bytes: f64,
    /// `final_bytes / transfer_bytes_per_ms`.
    pub downtime_ms: f64,
}

/// `adaptive`: stop as soon as freezing now would fit the downtime target,
/// or as soon as more rounds cannot help.
///
/// Model, recomputed from all rounds at each call:
/// - dirty rate `D` (bytes/ms): EWMA ([`EWMA_WEIGHT`]) of
///   `dirty_bytes / interval_ms` over the increments `rounds[1..]` (round 0
///   is the whole memory, not a rate); rounds with `interval_ms ≤ 0` are
///   skipped.
/// - transfer rate `T` (bytes/ms): `link_bytes_per_ms` when given, else the
///   EWMA of `dirty_bytes / copy_ms` over all non-empty rounds with
///   `copy_ms > 0`.
/// - the final delta is what gets dirtied since the tracker was last
///   collected, i.e. while the last round was being copied:
///   `F = D × last.copy_ms`; predicted downtime `F / T`.
///
/// `D` is a dirty-*set* rate (a page rewritten within a window counts once),
/// so `F` underestimates the delta of a window shorter than the rounds' for
/// a writer with a small hot set; such a writer is caught by the shrink test
/// instead.
///
/// Stops, first match wins: the last round is empty ([`StopReason::Idle`]);
/// `F / T ≤ target_downtime_ms` ([`StopReason::FitsDowntimeTarget`]); none
/// of the last [`SHRINK_WINDOW`] rounds fell by more than 10% from the one
/// before ([`StopReason::NotShrinking`]: pre-copy has converged as far as it
/// will, further rounds only spend bandwidth); then `max_rounds` and
/// `time_limit_ms`, so a writer that never settles still migrates. Without
/// an increment or a transfer-rate sample there is no prediction and only
/// the other tests apply.
#[derive(Debug, Clone)]
pub struct AdaptivePolicy {
    limits: Limits,
}

impl AdaptivePolicy {
    pub fn new(limits: Limits) -> Self {
        AdaptivePolicy { limits }
    }

    /// The prediction for freezing after the last of `rounds`, or `None`
    /// while a rate is still unknown.
    pub fn estimate(&self, rounds: &[RoundInfo]) -> Option<Estimate> {
        let last = rounds.last()?;
        let dirty_rate = dirty_rate(rounds)?;
        let link = self
            .limits
            .link_bytes_per_ms
            .filter(|r| r.is_finite() && *r > 0.0);
        let transfer_rate = match link {
            Some(r) => r,
            None => ewma(
                rounds
                    .iter()
                    .filter(|r| r.dirty_bytes > 0)
                    .filter_map(|r| rate(r.dirty_bytes, r.copy_ms)),
            )?,
        };
        // Both rates are finite and > 0 (see `rate`), so no division by zero.
        let final_bytes = dirty_rate * last.copy_ms.max(0.0);
        Some(Estimate {
            dirty_bytes_per_ms: dirty_rate,
            transfer_bytes_per_ms: transfer_rate,
            final_bytes,
            downtime_ms: final_bytes / transfer_rate,
        })
    }
}

/// EWMA of `dirty_bytes / interval_ms` over the increments `rounds[1..]`
/// (round 0 is the whole memory, not a rate), bytes/ms; `None` before one.
fn dirty_rate(rounds: &[RoundInfo]) -> Option<f64> {
    ewma(
        rounds
            .get(1..)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| rate(r.dirty_bytes, r.interval_ms)),
    )
}

/// `bytes / ms`, or `None` when the duration is not a positive finite
/// number (a zero-length round says nothing about a rate).
fn rate(bytes: u64, ms: f64) -> Option<f64> {
    let r = bytes as f64 / ms;
    (ms.is_finite() && ms > 0.0 && r.is_finite() && r > 0.0).then_some(r)
}

/// Exponentially weighted moving average, newest sample last; `None` for no
/// samples.
fn ewma(samples: impl Iterator<Item = f64>) -> Option<f64> {
    samples.fold(None, |avg, s| {
        Some(match avg {
            None => s,
            Some(a) => EWMA_WEIGHT * s + (1.0 - EWMA_WEIGHT) * a,
        })
    })
}

/// True when none of the last [`SHRINK_WINDOW`] rounds copied less than
/// [`SHRINK_FACTOR`] of the round before it.
fn not_shrinking(rounds: &[RoundInfo]) -> bool {
    let Some(window) = rounds
        .len()
        .checked_sub(SHRINK_WINDOW)
        .map(|s| &rounds[s..])
    else {
        return false;
    };
    window
        .windows(2)
        .all(|w| w[1].dirty_bytes as f64 >= w[0].dirty_bytes as f64 * SHRINK_FACTOR)
}

impl StopPolicy for AdaptivePolicy {
    fn name(&self) -> String {
        PolicySpec::Adaptive.to_string()
    }

    fn decide(&mut self, rounds: &[RoundInfo], elapsed_ms: f64) -> Decision {
        if rounds.last().is_some_and(|r| r.dirty_bytes == 0) {
            return Decision::Stop(StopReason::Idle);
        }
        if let Some(est) = self.estimate(rounds) {
            if est.downtime_ms <= self.limits.target_downtime_ms {
                return Decision::Stop(StopReason::FitsDowntimeTarget {
                    predicted_ms: est.downtime_ms,
                });
            }
        }
        if not_shrinking(rounds) {
            return Decision::Stop(StopReason::NotShrinking);
        }
        check_limits(&self.limits, rounds, elapsed_ms)
    }
}

/// `hybrid`: pre-copy while it converges, post-copy when it cannot.
///
/// Decides only once the link's rate is known (the user's
/// `link_bytes_per_ms`, else the rate the migration measured sending a
/// round, [`StopPolicy::observe_link`]): pre-copy's own copy times measure
/// the local read, which would make any delta look quick to send. Then it
/// stops as soon as the increments show pages dirtied faster than the link
/// carries them (the dirty-rate EWMA at or above the link rate), and
/// otherwise as [`AdaptivePolicy`] does with that link rate.
/// If it stopped because the final delta fits the downtime target, or the
/// program is idle, the delta is sent frozen as usual; for every other
/// reason (dirtied faster than the link, not shrinking, round or time limit)
/// the program resumes at the destination at once and the delta follows by
/// post-copy.
#[derive(Debug, Clone)]
pub struct HybridPolicy {
    adaptive: AdaptivePolicy,
    measured_link: Option<f64>,
}

impl HybridPolicy {
    pub fn new(limits: Limits) -> Self {
        HybridPolicy {
            adaptive: AdaptivePolicy::new(limits),
            measured_link: None,
        }
    }

    fn link_rate(&self) -> Option<f64> {
        self.adaptive
            .limits
            .link_bytes_per_ms
            .filter(|r| r.is_finite() && *r > 0.0)
            .or(self.measured_link)
    }
}

impl StopPolicy for HybridPolicy {
    fn name(&self) -> String {
        PolicySpec::Hybrid.to_string()
    }

    fn decide(&mut self, rounds: &[RoundInfo], elapsed_ms: f64) -> Decision {
        let Some(link) = self.link_rate() else {
            return check_limits(&self.adaptive.limits, rounds, elapsed_ms);
        };
        if let Some(d) = dirty_rate(rounds).filter(|&d| d >= link) {
            return Decision::Stop(StopReason::DirtiedFasterThanLink {
                dirty_mb_s: d / 1e3,
                link_mb_s: link / 1e3,
            });
        }
        let mut limits = self.adaptive.limits;
        limits.link_bytes_per_ms = Some(link);
        AdaptivePolicy::new(limits).decide(rounds, elapsed_ms)
    }

    fn post_copy(&self, reason: &StopReason) -> bool {
        !matches!(
            reason,
            StopReason::FitsDowntimeTarget { .. } | StopReason::Idle | StopReason::HashesEqual
        )
    }

    fn observe_link(&mut self, bytes_per_ms: f64) {
        if bytes_per_ms.is_finite() && bytes_per_ms > 0.0 {
            self.measured_link = Some(match self.measured_link {
                None => bytes_per_ms,
                Some(a) => EWMA_WEIGHT * bytes_per_ms + (1.0 - EWMA_WEIGHT) * a,
            });
        }
    }
}

/// `postcopy`: one pre-copy round (round 0, the whole memory, sent while
/// the program runs), then freeze, resume at the destination at once, and
/// send everything written since by post-copy.
#[derive(Debug, Clone, Copy)]
pub struct PostCopyPolicy;

impl StopPolicy for PostCopyPolicy {
    fn name(&self) -> String {
        PolicySpec::PostCopy.to_string()
    }

    fn decide(&mut self, _rounds: &[RoundInfo], _elapsed_ms: f64) -> Decision {
        Decision::Stop(StopReason::PostCopyAfterRoundZero)
    }

    fn post_copy(&self, _reason: &StopReason) -> bool {
        true
    }
}

/// `rounds:N`: exactly N pre-copy rounds (round 0 included), then stop,
/// whatever they measured. No other bound applies: the caller asked for N.
#[derive(Debug, Clone)]
pub struct RoundsPolicy {
    rounds: u32,
}

impl RoundsPolicy {
    pub fn new(rounds: u32) -> Self {
        RoundsPolicy { rounds }
    }
}

impl StopPolicy for RoundsPolicy {
    fn name(&self) -> String {
        PolicySpec::Rounds(self.rounds).to_string()
    }

    fn decide(&mut self, rounds: &[RoundInfo], _elapsed_ms: f64) -> Decision {
        if rounds.len() >= self.rounds as usize {
            Decision::Stop(StopReason::RoundsDone)
        } else {
            Decision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const MIB: u64 = 1 << 20;

    fn round(round: u32, dirty_bytes: u64, hash: u64, copy_ms: f64, interval_ms: f64) -> RoundInfo {
        RoundInfo {
            round,
            dirty_pages: dirty_bytes / PAGE,
            dirty_bytes,
            hash,
            copy_ms,
            interval_ms,
        }
    }

    /// Tracking cost between two rounds in the simulation, in ms.
    const ROUND_OVERHEAD_MS: f64 = 1.0;

    /// A simulated writer: `total` bytes resident, dirtying `dirty_per_ms`
    /// bytes/ms with a hot set capped at `hot_set` bytes, copied at
    /// `link` bytes/ms; each round starts [`ROUND_OVERHEAD_MS`] after the
    /// previous one is copied.
    struct Writer {
        total: u64,
        dirty_per_ms: f64,
        hot_set: u64,
        link: f64,
        /// Every increment has different content (a counter).
        changing: bool,
    }

    impl Writer {
        /// Round `k` as the loop would measure it.
        fn round(&self, k: u32, prev: Option<&RoundInfo>) -> RoundInfo {
            let (bytes, interval) = match prev {
                None => (self.total, 0.0),
                Some(p) => {
                    let interval = p.copy_ms + ROUND_OVERHEAD_MS;
                    let dirtied = (self.dirty_per_ms * interval) as u64;
                    (dirtied.min(self.hot_set), interval)
                }
            };
            let hash = if self.changing || k == 0 {
                0x9e37_79b9 ^ u64::from(k)
            } else {
                7
            };
            round(k, bytes, hash, bytes as f64 / self.link, interval)
        }

        /// Run `policy` until it stops (or 1000 rounds, a test failure);
        /// returns the rounds run and why it stopped.
        fn run(&self, policy: &mut dyn StopPolicy) -> (usize, StopReason) {
            let mut rounds: Vec<RoundInfo> = Vec::new();
            let mut elapsed = 0.0;
            for k in 0..1000u32 {
                let r = self.round(k, rounds.last());
                elapsed += r.copy_ms + ROUND_OVERHEAD_MS;
                rounds.push(r);
                if let Decision::Stop(reason) = policy.decide(&rounds, elapsed) {
                    return (rounds.len(), reason);
                }
            }
            panic!("{} never stopped", policy.name());
        }
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn paper_stops_on_equal_consecutive_hashes_and_not_before() {
        let mut p = PaperPolicy::new(limits());
        let mut rounds = vec![round(0, 64 * MIB, 1, 60.0, 0.0)];
        assert_eq!(p.decide(&rounds, 60.0), Decision::Continue);
        rounds.push(round(1, 40 * PAGE, 2, 0.1, 60.0));
        assert_eq!(p.decide(&rounds, 61.0), Decision::Continue);
        rounds.push(round(2, 8 * PAGE, 3, 0.1, 1.0));
        assert_eq!(p.decide(&rounds, 62.0), Decision::Continue);
        rounds.push(round(3, 8 * PAGE, 3, 0.1, 1.0));
        assert_eq!(
            p.decide(&rounds, 63.0),
            Decision::Stop(StopReason::HashesEqual)
        );
    }

    #[test]
    fn paper_never_compares_the_full_copy() {
        // Round 0 is the whole memory, not an increment: equal to round 1's
        // hash by chance must not stop.
        let mut p = PaperPolicy::new(limits());
        let rounds = [round(0, MIB, 5, 1.0, 0.0), round(1, PAGE, 5, 0.1, 1.0)];
        assert_eq!(p.decide(&rounds, 2.0), Decision::Continue);
    }

    #[test]
    fn paper_with_a_changing_writer_stops_at_max_rounds() {
        let busy = Writer {
            total: 256 * MIB,
            dirty_per_ms: 1000.0,
            hot_set: 256 * MIB,
            link: 1e6,
            changing: true,
        };
        let lim = Limits {
            max_rounds: 7,
            ..limits()
        };
        assert_eq!(
            busy.run(&mut PaperPolicy::new(lim)),
            (7, StopReason::MaxRounds)
        );
    }

    #[test]
    fn paper_with_a_changing_writer_stops_at_the_time_limit() {
        let mut p = PaperPolicy::new(Limits {
            time_limit_ms: 500.0,
            ..limits()
        });
        let rounds: Vec<_> = (0..4)
            .map(|k| round(k, MIB, u64::from(k), 1.0, 1.0))
            .collect();
        assert_eq!(p.decide(&rounds, 499.0), Decision::Continue);
        assert_eq!(
            p.decide(&rounds, 500.0),
            Decision::Stop(StopReason::TimeLimit)
        );
    }

    #[test]
    fn adaptive_stops_earlier_than_paper_for_a_steady_writer_that_fits() {
        // 256 MiB at ~1 GB/s; the writer dirties 1 MB/s of changing data:
        // each increment is small, but never hashes equal.
        let steady = Writer {
            total: 256 * MIB,
            dirty_per_ms: 1000.0,
            hot_set: 256 * MIB,
            link: 1e6,
            changing: true,
        };
        let (paper_rounds, paper_reason) = steady.run(&mut PaperPolicy::new(limits()));
        assert_eq!(paper_reason, StopReason::MaxRounds);
        let (adaptive_rounds, adaptive_reason) = steady.run(&mut AdaptivePolicy::new(limits()));
        let StopReason::FitsDowntimeTarget { predicted_ms } = adaptive_reason else {
            panic!("adaptive stopped with {adaptive_reason:?}");
        };
        assert!(
            predicted_ms <= limits().target_downtime_ms,
            "{predicted_ms}"
        );
        assert!(
            adaptive_rounds < paper_rounds,
            "{adaptive_rounds} vs {paper_rounds}"
        );
        // It needs one increment to measure the dirty rate, and no more.
        assert_eq!(adaptive_rounds, 2);
    }

    #[test]
    fn adaptive_predicts_dirty_rate_times_last_copy_over_transfer_rate() {
        let a = AdaptivePolicy::new(limits());
        // Round 1: 1000 bytes dirtied in 10 ms (100 B/ms), copied in 2 ms
        // (500 B/ms); round 0 copied 5000 B in 10 ms (500 B/ms).
        let rounds = [round(0, 5000, 1, 10.0, 0.0), round(1, 1000, 2, 2.0, 10.0)];
        let est = a.estimate(&rounds).expect("both rates known");
        assert_eq!(est.dirty_bytes_per_ms, 100.0);
        assert_eq!(est.transfer_bytes_per_ms, 500.0);
        assert_eq!(est.final_bytes, 200.0);
        assert_eq!(est.downtime_ms, 0.4);
    }

    #[test]
    fn adaptive_continues_while_the_prediction_misses_the_target() {
        // A shrinking dirty set whose predicted downtime is still above
        // 10 ms: keep copying.
        let mut a = AdaptivePolicy::new(limits());
        // 1 MB/ms measured; 200 MB dirtied in 1000 ms (200 kB/ms) and
        // copied in 200 ms: predicted final 40 MB, i.e. 40 ms.
        let rounds = [
            round(0, 1_000_000_000, 1, 1000.0, 0.0),
            round(1, 200_000_000, 2, 200.0, 1000.0),
        ];
        let est = a.estimate(&rounds).expect("rates known");
        assert_eq!(est.downtime_ms, 40.0);
        assert_eq!(a.decide(&rounds, 1200.0), Decision::Continue);
    }

    #[test]
    fn adaptive_uses_the_link_rate_when_given() {
        // Copies measured fast (local reads), but the link is slow: the
        // prediction must use the link and not stop.
        let rounds = [
            round(0, 100 * MIB, 1, 100.0, 0.0),
            round(1, 10 * MIB, 2, 10.0, 100.0),
        ];
        let mut measured = AdaptivePolicy::new(limits());
        assert!(matches!(
            measured.decide(&rounds, 110.0),
            Decision::Stop(StopReason::FitsDowntimeTarget { .. })
        ));
        let mut slow_link = AdaptivePolicy::new(Limits {
            link_bytes_per_ms: Some(1000.0),
            ..limits()
        });
        assert_eq!(slow_link.decide(&rounds, 110.0), Decision::Continue);
    }

    #[test]
    fn adaptive_stops_not_shrinking_for_a_large_hot_set() {
        // 64 MiB rewritten continuously: every increment is the whole hot
        // set, far too big for 10 ms at 1 GB/s.
        let busy = Writer {
            total: 256 * MIB,
            dirty_per_ms: 1e6,
            hot_set: 64 * MIB,
            link: 1e6,
            changing: true,
        };
        // Round 0 (256 MiB) → 1 (64 MiB) shrank; 1 → 2 → 3 did not.
        assert_eq!(
            busy.run(&mut AdaptivePolicy::new(limits())),
            (4, StopReason::NotShrinking)
        );
        // The paper rule would have copied 64 MiB per round until the bound.
        assert_eq!(
            busy.run(&mut PaperPolicy::new(limits())),
            (30, StopReason::MaxRounds)
        );
    }

    #[test]
    fn adaptive_keeps_going_while_rounds_shrink_by_more_than_ten_percent() {
        let mut a = AdaptivePolicy::new(Limits {
            link_bytes_per_ms: Some(1.0), // nothing fits: only the shrink test decides
            ..limits()
        });
        let sizes = [1000 * MIB, 800 * MIB, 640 * MIB, 512 * MIB];
        let rounds: Vec<_> = sizes
            .iter()
            .zip(0u32..)
            .map(|(&b, k)| round(k, b, u64::from(k), 100.0, 100.0))
            .collect();
        assert_eq!(a.decide(&rounds, 400.0), Decision::Continue);
        // 512 → 470 MiB is an 8% drop: with 640 → 512 the window still has
        // one real shrink, then 470 → 460 makes two non-shrinking steps.
        let mut rounds = rounds;
        rounds.push(round(4, 470 * MIB, 4, 100.0, 100.0));
        assert_eq!(a.decide(&rounds, 500.0), Decision::Continue);
        rounds.push(round(5, 460 * MIB, 5, 100.0, 100.0));
        assert_eq!(
            a.decide(&rounds, 600.0),
            Decision::Stop(StopReason::NotShrinking)
        );
    }

    #[test]
    fn adaptive_stops_idle_on_an_empty_round() {
        let mut a = AdaptivePolicy::new(Limits {
            link_bytes_per_ms: Some(1.0),
            ..limits()
        });
        let mut rounds = vec![
            round(0, 64 * MIB, 1, 60.0, 0.0),
            round(1, 4 * MIB, 2, 4.0, 60.0),
        ];
        assert_eq!(a.decide(&rounds, 64.0), Decision::Continue);
        rounds.push(round(2, 0, 3, 0.0, 4.0));
        assert_eq!(a.decide(&rounds, 68.0), Decision::Stop(StopReason::Idle));
    }

    #[test]
    fn adaptive_survives_zero_durations() {
        // Zero copy and interval times give no rate: no prediction, no
        // NaN, no stop until a bound.
        let mut a = AdaptivePolicy::new(Limits {
            max_rounds: 5,
            ..limits()
        });
        let rounds: Vec<_> = [MIB, MIB / 2, MIB / 4]
            .iter()
            .zip(0u32..)
            .map(|(&b, k)| round(k, b, u64::from(k), 0.0, 0.0))
            .collect();
        assert_eq!(a.estimate(&rounds), None);
        assert_eq!(a.decide(&rounds, 0.0), Decision::Continue);
    }

    #[test]
    fn adaptive_is_bounded_by_max_rounds_and_time_limit() {
        let lim = Limits {
            max_rounds: 3,
            time_limit_ms: 1000.0,
            link_bytes_per_ms: Some(1.0),
            ..limits()
        };
        // Shrinking by half each round: the shrink test never fires.
        let halves: Vec<_> = (0..3)
            .map(|k| round(k, (64 * MIB) >> k, u64::from(k), 100.0, 100.0))
            .collect();
        let mut a = AdaptivePolicy::new(lim);
        assert_eq!(a.decide(&halves[..2], 200.0), Decision::Continue);
        assert_eq!(
            a.decide(&halves, 300.0),
            Decision::Stop(StopReason::MaxRounds)
        );
        assert_eq!(
            a.decide(&halves[..2], 1000.0),
            Decision::Stop(StopReason::TimeLimit)
        );
        // The shrink test comes before the bounds: a growing dirty set
        // reports why, rather than just "max rounds".
        let growing: Vec<_> = (0..3)
            .map(|k| round(k, MIB * u64::from(k + 1), u64::from(k), 100.0, 100.0))
            .collect();
        assert_eq!(
            a.decide(&growing, 0.0),
            Decision::Stop(StopReason::NotShrinking)
        );
    }

    #[test]
    fn rounds_n_is_exact_and_ignores_the_bounds() {
        let mut p = build(
            &PolicySpec::Rounds(3),
            &Limits {
                max_rounds: 1,
                time_limit_ms: 0.0,
                ..limits()
            },
        );
        let rounds: Vec<_> = (0..3).map(|k| round(k, 0, 0, 0.0, 0.0)).collect();
        assert_eq!(p.decide(&rounds[..1], 1e9), Decision::Continue);
        assert_eq!(p.decide(&rounds[..2], 1e9), Decision::Continue);
        assert_eq!(
            p.decide(&rounds, 1e9),
            Decision::Stop(StopReason::RoundsDone)
        );
    }

    #[test]
    fn build_makes_the_named_policy() {
        for spec in [
            PolicySpec::Paper,
            PolicySpec::Adaptive,
            PolicySpec::Rounds(4),
        ] {
            assert_eq!(build(&spec, &limits()).name(), spec.to_string());
        }
    }

    #[test]
    fn parse_errors_name_the_input() {
        for bad in [
            "rounds:0",
            "rounds:x",
            "fast",
            "rounds:",
            "rounds:+3",
            "rounds:99999999999",
            "",
        ] {
            let err = bad.parse::<PolicySpec>().expect_err(bad);
            assert_eq!(err.input, bad);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
        assert!("rounds:0"
            .parse::<PolicySpec>()
            .expect_err("zero")
            .to_string()
            .contains("at least 1"));
    }

    #[test]
    fn parse_and_display_round_trip() {
        assert_eq!("paper".parse(), Ok(PolicySpec::Paper));
        assert_eq!("adaptive".parse(), Ok(PolicySpec::Adaptive));
        assert_eq!("rounds:12".parse(), Ok(PolicySpec::Rounds(12)));
        for spec in [
            PolicySpec::Paper,
            PolicySpec::Adaptive,
            PolicySpec::Rounds(1),
            PolicySpec::Rounds(u32::MAX),
        ] {
            assert_eq!(spec.to_string().parse(), Ok(spec));
        }
    }

    #[test]
    fn limits_default() {
        let l = Limits::default();
        assert_eq!(
            (
                l.max_rounds,
                l.time_limit_ms,
                l.target_downtime_ms,
                l.link_bytes_per_ms
            ),
            (30, 30_000.0, 10.0, None)
        );
    }

    #[test]
    fn stop_reasons_read_as_sentences() {
        let fits = StopReason::FitsDowntimeTarget { predicted_ms: 1.25 }.to_string();
        assert!(fits.contains("1.250 ms"), "{fits}");
        let all = [
            StopReason::HashesEqual,
            StopReason::NotShrinking,
            StopReason::MaxRounds,
            StopReason::TimeLimit,
            StopReason::RoundsDone,
            StopReason::Idle,
        ]
        .map(|r| r.to_string());
        for (i, s) in all.iter().enumerate() {
            assert!(s.len() > 20, "{s}");
            assert!(!all[..i].contains(s), "duplicate: {s}");
        }
    }

    #[test]
    fn hybrid_waits_for_the_link_then_goes_post_copy_for_a_fast_writer() {
        let mut p = HybridPolicy::new(Limits::default());
        // 64 MiB resident; increments of 16 MiB every 20 ms: 800 MB/s.
        let rounds = vec![
            round(0, 64 * MIB, 1, 60.0, 60.0),
            round(1, 16 * MIB, 2, 15.0, 20.0),
        ];
        // The local copy is fast: without the link's rate it must not
        // conclude the delta fits.
        assert_eq!(p.decide(&rounds, 80.0), Decision::Continue);
        // The link carries 12.5 MB/s (100 Mbit/s).
        p.observe_link(12_500.0);
        match p.decide(&rounds, 80.0) {
            Decision::Stop(r @ StopReason::DirtiedFasterThanLink { .. }) => {
                assert!(p.post_copy(&r), "{r}");
                assert!(r.to_string().contains("faster than the link"), "{r}");
            }
            other => panic!("expected a post-copy stop, got {other:?}"),
        }
    }

    #[test]
    fn hybrid_keeps_pre_copy_when_the_delta_fits_the_target() {
        let mut p = HybridPolicy::new(Limits {
            link_bytes_per_ms: Some(1_000_000.0),
            ..Limits::default()
        });
        // 100 pages per 100 ms: tiny against a 1 GB/s link.
        let rounds = vec![
            round(0, 64 * MIB, 1, 60.0, 60.0),
            round(1, 100 * PAGE, 2, 1.0, 100.0),
        ];
        match p.decide(&rounds, 160.0) {
            Decision::Stop(r @ StopReason::FitsDowntimeTarget { .. }) => {
                assert!(!p.post_copy(&r), "a delta that fits goes frozen: {r}")
            }
            other => panic!("expected FitsDowntimeTarget, got {other:?}"),
        }
        assert!(!p.post_copy(&StopReason::Idle));
        assert!(p.post_copy(&StopReason::NotShrinking));
        assert!(p.post_copy(&StopReason::MaxRounds));
    }

    #[test]
    fn postcopy_stops_after_round_zero_and_pre_copy_policies_never_post_copy() {
        let mut p = PostCopyPolicy;
        let r0 = vec![round(0, 64 * MIB, 1, 60.0, 60.0)];
        assert_eq!(
            p.decide(&r0, 60.0),
            Decision::Stop(StopReason::PostCopyAfterRoundZero)
        );
        assert!(p.post_copy(&StopReason::PostCopyAfterRoundZero));
        for spec in ["paper", "adaptive", "rounds:3"] {
            let spec: PolicySpec = spec.parse().expect("spec");
            assert!(!spec.may_post_copy());
            let policy = build(&spec, &Limits::default());
            assert!(!policy.post_copy(&StopReason::MaxRounds), "{spec}");
        }
        for spec in ["hybrid", "postcopy"] {
            let parsed: PolicySpec = spec.parse().expect("spec");
            assert!(parsed.may_post_copy());
            assert_eq!(parsed.to_string(), spec);
        }
    }
}
