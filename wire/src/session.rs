//! The migration protocol's rules, as two state machines: [`Destination`]
//! (what `tern serve` may receive and send, in which order) and [`Source`]
//! (the same for `tern migrate`). They do no I/O: each side feeds them
//! every message it receives and every one it is about to send, and acts on
//! what they return. So the rules live in one place, typed, and are
//! unit-tested without root, sockets or a program to move.
//!
//! ```text
//! source                                   destination
//!   Hello{protocol, session}        ->       (or Ask{session} -> Outcome)
//!                                   <-     Welcome | Refused
//!   FileData{round k}.. RoundDone{k} ->
//!                                   <-     RoundApplied{k}       (k = 0, 1, ..)
//!   ..final round: RoundDone{n, final} ->
//!   (pages_follow: PagesOf{pid}, Pages{start, data}, ZstdPages{..},
//!    ZeroPages{start, pages}.. -> the pages the image owes, streamed,
//!    process by process)
//!                                   <-     Ready{pid}            (rebuilt, stopped)
//!   Commit                          ->
//!                                   <-     Running{pid, ns_pid}
//!   post-copy (the final image left pages at the source):
//!   Pages{start, data}..            ->   <- PageWant{addrs}..
//!                                   <-     PostCopyDone{tally}
//!   Abort{reason} at any time before Commit; Refused{reason} at any time.
//! ```

use crate::net::{FileSummary, Message, PostCopyTally, SessionOutcome, PROTOCOL_VERSION};

/// A message that breaks the protocol, or a peer that ended the migration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("protocol {theirs} (tern {their_version}) is not supported; this tern speaks {PROTOCOL_VERSION}")]
    Version { theirs: u32, their_version: String },
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("{what} for round {got} while round {expected} is current")]
    WrongRound {
        what: &'static str,
        got: u32,
        expected: u32,
    },
    /// The other end refused or failed (the reason is its own words).
    #[error("the destination refused: {0}")]
    Refused(String),
    /// The source gave up; its program keeps running there.
    #[error("the source aborted: {0}")]
    Aborted(String),
    #[error("the answer is about migration {got:016x}, not {asked:016x}")]
    WrongSession { asked: u64, got: u64 },
    /// This side was about to send something the protocol does not allow
    /// now: a bug in tern, refused rather than sent.
    #[error("tern bug: {what} may not be sent now (state {state})")]
    OutOfTurn {
        what: &'static str,
        state: &'static str,
    },
}

/// Where a destination's session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationState {
    /// Waiting for `Hello` (or `Ask`).
    AwaitHello,
    /// `Ask` came; `Outcome` is to be sent.
    Asked,
    /// `Hello` came; `Welcome` or `Refused` is to be sent.
    Greeted,
    /// Receiving round `round`.
    Receiving { round: u32 },
    /// The final round came; it is being built (`pages_follow`: and the
    /// pages it owes are arriving, before `Ready`).
    Building { rounds: u32, pages_follow: bool },
    /// `Ready` was sent; waiting for `Commit` (or `Abort`).
    AwaitCommit,
    /// `Commit` came: the program is being resumed.
    Committed,
    /// `Running` was sent; the program runs and pages owed still arrive.
    PostCopy,
    /// A message broke the protocol: only a `Refused` may still be sent.
    Broken,
    /// Over (answered an `Ask`, sent `Running` or `Refused`, or the source
    /// aborted).
    Ended,
}

impl DestinationState {
    fn name(self) -> &'static str {
        match self {
            DestinationState::AwaitHello => "awaiting Hello",
            DestinationState::Asked => "asked",
            DestinationState::Greeted => "greeted",
            DestinationState::Receiving { .. } => "receiving rounds",
            DestinationState::Building { .. } => "building the final round",
            DestinationState::AwaitCommit => "awaiting Commit",
            DestinationState::Committed => "committed",
            DestinationState::PostCopy => "post-copy",
            DestinationState::Broken => "broken",
            DestinationState::Ended => "ended",
        }
    }
}

/// What a received message asks the destination to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationInput {
    /// A new migration: `pid` and `comm` on the source, its id.
    Start {
        pid: i32,
        comm: String,
        session: u64,
        kernel_release: String,
    },
    /// A source asks what became of migration `session`.
    Ask { session: u64 },
    /// A piece of file `name` of round `round`.
    Piece {
        round: u32,
        name: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// Round `round` is complete with exactly `files`.
    RoundDone {
        round: u32,
        final_round: bool,
        files: Vec<FileSummary>,
        pages_follow: bool,
    },
    /// Resume the program.
    Commit,
    /// Pages owed, from source address `start` on.
    Pages { start: u64, data: Vec<u8> },
    /// `pages` owed pages from `start` on are zeros (streamed only).
    ZeroPages { start: u64, pages: u64 },
    /// The streamed pages that follow are process `pid`'s.
    PagesOf { pid: i32 },
    /// `pages` owed pages from `start` on, compressed (streamed only).
    ZstdPages {
        start: u64,
        pages: u64,
        data: Vec<u8>,
    },
}

/// The destination's side of one connection.
#[derive(Debug)]
pub struct Destination {
    state: DestinationState,
    /// Rounds announced complete, and those reported applied.
    rounds_done: u32,
    rounds_applied: u32,
    /// The final image left pages at the source: after `Running` they
    /// arrive (post-copy).
    pages_owed: bool,
}

impl Default for Destination {
    fn default() -> Self {
        Self::new()
    }
}

impl Destination {
    pub fn new() -> Destination {
        Destination {
            state: DestinationState::AwaitHello,
            rounds_done: 0,
            rounds_applied: 0,
            pages_owed: false,
        }
    }

    /// The final round left pages at the source: `Running` opens the
    /// post-copy phase instead of ending the session.
    pub fn owe_pages(&mut self) {
        self.pages_owed = true;
    }

    pub fn state(&self) -> DestinationState {
        self.state
    }

    /// Whether messages from the source are still expected (none after
    /// `Commit`: the outcome is this side's to report).
    pub fn expects_input(&self) -> bool {
        !matches!(
            self.state,
            DestinationState::Committed | DestinationState::Broken | DestinationState::Ended
        )
    }

    /// Check a message from the source and say what it asks for.
    pub fn receive(&mut self, m: Message) -> Result<DestinationInput, ProtocolError> {
        use DestinationState as S;
        let got = m.kind();
        let (next, input) = match (self.state, m) {
            (S::AwaitHello, m) => self.greeted(m)?,
            (S::Asked | S::Greeted, _) => {
                return Err(self.unexpected("nothing before an answer", got))
            }
            (_, Message::Abort { reason }) if self.expects_input() && self.state != S::PostCopy => {
                self.state = S::Ended;
                return Err(ProtocolError::Aborted(reason));
            }
            (
                S::Receiving { round },
                Message::FileData {
                    round: r,
                    name,
                    offset,
                    data,
                },
            ) => {
                if r != round {
                    return Err(self.wrong_round("file data", r, round));
                }
                (
                    S::Receiving { round },
                    DestinationInput::Piece {
                        round,
                        name,
                        offset,
                        data,
                    },
                )
            }
            (
                S::Receiving { round },
                Message::RoundDone {
                    round: r,
                    final_round,
                    files,
                    pages_follow,
                },
            ) => {
                if r != round {
                    return Err(self.wrong_round("RoundDone", r, round));
                }
                if pages_follow && !final_round {
                    return Err(self.unexpected("pages to follow only a final round", got));
                }
                self.rounds_done = round + 1;
                let next = if final_round {
                    S::Building {
                        rounds: round + 1,
                        pages_follow,
                    }
                } else {
                    S::Receiving { round: round + 1 }
                };
                (
                    next,
                    DestinationInput::RoundDone {
                        round,
                        final_round,
                        files,
                        pages_follow,
                    },
                )
            }
            (S::Receiving { .. }, _) => {
                return Err(self.unexpected("FileData, RoundDone or Abort", got))
            }
            // Only the pages that follow the image, if they do.
            (s @ S::Building { pages_follow, .. }, m) => match streamed(m) {
                Some(input) if pages_follow => (s, input),
                _ => return Err(self.unexpected("nothing before Ready", got)),
            },
            (S::AwaitCommit, Message::Commit) => (S::Committed, DestinationInput::Commit),
            (S::AwaitCommit, _) => return Err(self.unexpected("Commit or Abort", got)),
            (S::PostCopy, Message::Pages { start, data }) => {
                (S::PostCopy, DestinationInput::Pages { start, data })
            }
            (S::PostCopy, _) => return Err(self.unexpected("Pages", got)),
            (S::Committed | S::Broken | S::Ended, _) => return Err(self.unexpected("nothing", got)),
        };
        self.state = next;
        Ok(input)
    }

    /// The first message: `Hello` (a migration) or `Ask` (a question about
    /// one), in this protocol's version.
    fn greeted(
        &mut self,
        m: Message,
    ) -> Result<(DestinationState, DestinationInput), ProtocolError> {
        use DestinationState as S;
        let got = m.kind();
        match m {
            Message::Hello {
                protocol,
                tern_version,
                ..
            } if protocol != PROTOCOL_VERSION => {
                self.state = S::Broken;
                Err(ProtocolError::Version {
                    theirs: protocol,
                    their_version: tern_version,
                })
            }
            Message::Ask { protocol, .. } if protocol != PROTOCOL_VERSION => {
                self.state = S::Broken;
                Err(ProtocolError::Version {
                    theirs: protocol,
                    their_version: "unknown".into(),
                })
            }
            Message::Ask { session, .. } => Ok((S::Asked, DestinationInput::Ask { session })),
            Message::Hello {
                pid,
                comm,
                session,
                kernel_release,
                ..
            } => Ok((
                S::Greeted,
                DestinationInput::Start {
                    pid,
                    comm,
                    session,
                    kernel_release,
                },
            )),
            _ => Err(self.unexpected("Hello or Ask", got)),
        }
    }

    /// Check a message this side is about to send; an answer out of turn is
    /// refused (and not sent).
    pub fn send(&mut self, m: &Message) -> Result<(), ProtocolError> {
        use DestinationState as S;
        let what = m.kind();
        self.state = match (self.state, m) {
            // A refusal may end the session at any point before the end.
            (s, Message::Refused { .. }) if s != S::Ended => S::Ended,
            (S::Asked, Message::Outcome { .. }) => S::Ended,
            (S::Greeted, Message::Welcome { .. }) => S::Receiving { round: 0 },
            (
                s @ (S::Receiving { .. } | S::Building { .. }),
                Message::RoundApplied { round, .. },
            ) if *round == self.rounds_applied && *round < self.rounds_done => {
                self.rounds_applied += 1;
                s
            }
            (S::Building { .. }, Message::Ready { .. }) => S::AwaitCommit,
            (S::Committed, Message::Running { .. }) if self.pages_owed => S::PostCopy,
            (S::Committed, Message::Running { .. }) => S::Ended,
            (S::PostCopy, Message::PageWant { .. }) => S::PostCopy,
            (S::PostCopy, Message::PostCopyDone { .. }) => S::Ended,
            _ => return Err(self.out_of_turn(what)),
        };
        Ok(())
    }

    fn unexpected(&mut self, expected: &'static str, got: &'static str) -> ProtocolError {
        if self.state != DestinationState::Ended {
            self.state = DestinationState::Broken;
        }
        ProtocolError::Unexpected { expected, got }
    }

    fn wrong_round(&mut self, what: &'static str, got: u32, expected: u32) -> ProtocolError {
        self.state = DestinationState::Broken;
        ProtocolError::WrongRound {
            what,
            got,
            expected,
        }
    }

    fn out_of_turn(&self, what: &'static str) -> ProtocolError {
        ProtocolError::OutOfTurn {
            what,
            state: self.state.name(),
        }
    }
}

/// A message of the pages streamed after an image, as the destination's
/// input (`None`: another kind).
fn streamed(m: Message) -> Option<DestinationInput> {
    match m {
        Message::Pages { start, data } => Some(DestinationInput::Pages { start, data }),
        Message::ZeroPages { start, pages } => Some(DestinationInput::ZeroPages { start, pages }),
        Message::PagesOf { pid } => Some(DestinationInput::PagesOf { pid }),
        Message::ZstdPages { start, pages, data } => {
            Some(DestinationInput::ZstdPages { start, pages, data })
        }
        _ => None,
    }
}

/// Where a source's migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Nothing sent yet.
    Start,
    /// `Hello` sent; waiting for `Welcome`.
    AwaitWelcome,
    /// Sending rounds (`next` is the next round's number).
    Streaming { next: u32 },
    /// The final round is sent; waiting for `Ready` (`pages_follow`:
    /// meanwhile sending the pages it owes).
    AwaitReady { pages_follow: bool },
    /// `Ready` came: the source may commit.
    Ready,
    /// `Commit` sent: waiting for `Running`.
    AwaitRunning,
    /// `Running` came; pages owed are being sent until `PostCopyDone`.
    PostCopy,
    /// `Running` came, or the migration ended otherwise.
    Ended,
}

impl SourceState {
    fn name(self) -> &'static str {
        match self {
            SourceState::Start => "start",
            SourceState::AwaitWelcome => "awaiting Welcome",
            SourceState::Streaming { .. } => "streaming rounds",
            SourceState::AwaitReady { .. } => "awaiting Ready",
            SourceState::Ready => "ready",
            SourceState::AwaitRunning => "awaiting Running",
            SourceState::PostCopy => "post-copy",
            SourceState::Ended => "ended",
        }
    }
}

/// What a received message tells the source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceInput {
    Welcome,
    Applied {
        round: u32,
        pages: u64,
        ms: f64,
    },
    Ready {
        pid: i32,
        ms: f64,
    },
    Running {
        pid: i32,
        ns_pid: i32,
        resume_ms: f64,
    },
    /// Post-copy: the program touched these pages at the destination.
    Want {
        addrs: Vec<u64>,
    },
    /// Post-copy: every page owed arrived.
    PostCopyDone {
        tally: PostCopyTally,
    },
}

/// The source's side of one migration.
#[derive(Debug)]
pub struct Source {
    state: SourceState,
    /// Rounds whose `RoundDone` was sent, and those reported applied.
    rounds_sent: u32,
    rounds_applied: u32,
    /// The final round left pages here (post-copy).
    pages_owed: bool,
}

impl Default for Source {
    fn default() -> Self {
        Self::new()
    }
}

impl Source {
    pub fn new() -> Source {
        Source {
            state: SourceState::Start,
            rounds_sent: 0,
            rounds_applied: 0,
            pages_owed: false,
        }
    }

    /// The final round leaves pages here: `Running` opens the post-copy
    /// phase instead of ending the migration.
    pub fn owe_pages(&mut self) {
        self.pages_owed = true;
    }

    pub fn state(&self) -> SourceState {
        self.state
    }

    /// Rounds the destination reported applied.
    pub fn rounds_applied(&self) -> u32 {
        self.rounds_applied
    }

    /// Check a message this side is about to send.
    pub fn send(&mut self, m: &Message) -> Result<(), ProtocolError> {
        use SourceState as S;
        let what = m.kind();
        self.state = match (self.state, m) {
            (S::Start, Message::Hello { .. }) => S::AwaitWelcome,
            (s, Message::Abort { .. }) if !matches!(s, S::AwaitRunning | S::Ended) => S::Ended,
            (S::Streaming { next }, Message::FileData { round, .. }) if *round == next => {
                S::Streaming { next }
            }
            (
                S::Streaming { .. },
                Message::RoundDone {
                    round,
                    final_round,
                    pages_follow,
                    ..
                },
            ) => return self.round_sent(*round, *final_round, *pages_follow),
            (
                s @ S::AwaitReady { pages_follow: true },
                Message::Pages { .. }
                | Message::ZeroPages { .. }
                | Message::PagesOf { .. }
                | Message::ZstdPages { .. },
            ) => s,
            (S::Ready, Message::Commit) => S::AwaitRunning,
            (S::PostCopy, Message::Pages { .. }) => S::PostCopy,
            _ => {
                return Err(ProtocolError::OutOfTurn {
                    what,
                    state: self.state.name(),
                })
            }
        };
        Ok(())
    }

    /// Check that round `round` (its files and its `RoundDone`) may be sent
    /// now: rounds go in order, none after the final one; pages follow
    /// only the final one.
    pub fn round_sent(
        &mut self,
        round: u32,
        final_round: bool,
        pages_follow: bool,
    ) -> Result<(), ProtocolError> {
        match self.state {
            SourceState::Streaming { next } if round == next && (final_round || !pages_follow) => {
                self.rounds_sent = next + 1;
                self.state = if final_round {
                    SourceState::AwaitReady { pages_follow }
                } else {
                    SourceState::Streaming { next: next + 1 }
                };
                Ok(())
            }
            state => Err(ProtocolError::OutOfTurn {
                what: "a round",
                state: state.name(),
            }),
        }
    }

    /// Check a message from the destination and say what it means.
    pub fn receive(&mut self, m: Message) -> Result<SourceInput, ProtocolError> {
        use SourceState as S;
        let got = m.kind();
        match (self.state, m) {
            (_, Message::Refused { reason }) => {
                self.state = S::Ended;
                Err(ProtocolError::Refused(reason))
            }
            (
                S::AwaitWelcome,
                Message::Welcome {
                    protocol,
                    tern_version,
                },
            ) => {
                if protocol != PROTOCOL_VERSION {
                    self.state = S::Ended;
                    return Err(ProtocolError::Version {
                        theirs: protocol,
                        their_version: tern_version,
                    });
                }
                self.state = S::Streaming { next: 0 };
                Ok(SourceInput::Welcome)
            }
            (S::AwaitWelcome, _) => Err(self.unexpected("Welcome", got)),
            (
                S::Streaming { .. } | S::AwaitReady { .. },
                Message::RoundApplied { round, pages, ms },
            ) => {
                if round != self.rounds_applied || round >= self.rounds_sent {
                    self.state = S::Ended;
                    return Err(ProtocolError::WrongRound {
                        what: "RoundApplied",
                        got: round,
                        expected: self.rounds_applied,
                    });
                }
                self.rounds_applied += 1;
                Ok(SourceInput::Applied { round, pages, ms })
            }
            (S::AwaitReady { .. }, Message::Ready { pid, ms }) => {
                self.state = S::Ready;
                Ok(SourceInput::Ready { pid, ms })
            }
            (S::Streaming { .. }, _) => Err(self.unexpected("RoundApplied", got)),
            (S::AwaitReady { .. }, _) => Err(self.unexpected("RoundApplied or Ready", got)),
            (
                S::AwaitRunning,
                Message::Running {
                    pid,
                    ns_pid,
                    resume_ms,
                },
            ) => {
                self.state = if self.pages_owed {
                    S::PostCopy
                } else {
                    S::Ended
                };
                Ok(SourceInput::Running {
                    pid,
                    ns_pid,
                    resume_ms,
                })
            }
            (S::AwaitRunning, _) => Err(self.unexpected("Running", got)),
            (S::PostCopy, Message::PageWant { addrs }) => Ok(SourceInput::Want { addrs }),
            (S::PostCopy, Message::PostCopyDone { tally }) => {
                self.state = S::Ended;
                Ok(SourceInput::PostCopyDone { tally })
            }
            (S::PostCopy, _) => Err(self.unexpected("PageWant or PostCopyDone", got)),
            (S::Start | S::Ready | S::Ended, _) => Err(self.unexpected("nothing", got)),
        }
    }

    fn unexpected(&mut self, expected: &'static str, got: &'static str) -> ProtocolError {
        self.state = SourceState::Ended;
        ProtocolError::Unexpected { expected, got }
    }
}

/// Check the answer to `Ask { session: asked }`.
pub fn outcome_of(asked: u64, m: Message) -> Result<SessionOutcome, ProtocolError> {
    match m {
        Message::Outcome { session, outcome } if session == asked => Ok(outcome),
        Message::Outcome { session, .. } => Err(ProtocolError::WrongSession {
            asked,
            got: session,
        }),
        Message::Refused { reason } => Err(ProtocolError::Refused(reason)),
        other => Err(ProtocolError::Unexpected {
            expected: "Outcome",
            got: other.kind(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol: u32) -> Message {
        Message::Hello {
            protocol,
            tern_version: "t".into(),
            pid: 42,
            comm: "counter".into(),
            kernel_release: "6.18".into(),
            session: 7,
        }
    }
    fn welcome() -> Message {
        Message::Welcome {
            protocol: PROTOCOL_VERSION,
            tern_version: "t".into(),
        }
    }
    fn piece(round: u32) -> Message {
        Message::FileData {
            round,
            name: "pages.img".into(),
            offset: 0,
            data: vec![1, 2, 3],
        }
    }
    fn done(round: u32, final_round: bool) -> Message {
        Message::RoundDone {
            round,
            final_round,
            files: Vec::new(),
            pages_follow: false,
        }
    }
    fn applied(round: u32) -> Message {
        Message::RoundApplied {
            round,
            pages: 1,
            ms: 0.5,
        }
    }
    fn ready() -> Message {
        Message::Ready { pid: 42, ms: 1.0 }
    }
    fn running() -> Message {
        Message::Running {
            pid: 99,
            ns_pid: 42,
            resume_ms: 0.2,
        }
    }
    fn abort() -> Message {
        Message::Abort {
            reason: "gave up".into(),
        }
    }

    /// Both ends in lockstep: every message is checked by its sender's
    /// machine, then by its receiver's.
    struct Pair {
        src: Source,
        dst: Destination,
    }

    impl Pair {
        fn new() -> Pair {
            Pair {
                src: Source::new(),
                dst: Destination::new(),
            }
        }
        fn source_says(&mut self, m: Message) -> Result<DestinationInput, ProtocolError> {
            self.src.send(&m)?;
            self.dst.receive(m)
        }
        fn destination_says(&mut self, m: Message) -> Result<SourceInput, ProtocolError> {
            self.dst.send(&m)?;
            self.src.receive(m)
        }
        /// Hello, Welcome: both in their streaming state.
        fn started() -> Pair {
            let mut p = Pair::new();
            assert!(matches!(
                p.source_says(hello(PROTOCOL_VERSION)),
                Ok(DestinationInput::Start { pid: 42, .. })
            ));
            assert_eq!(p.destination_says(welcome()), Ok(SourceInput::Welcome));
            p
        }
        /// Rounds 0..n-1 sent and applied, then the final round n sent.
        fn final_sent(n: u32) -> Pair {
            let mut p = Pair::started();
            for r in 0..n {
                p.source_says(piece(r)).expect("piece");
                p.source_says(done(r, false)).expect("round");
                assert!(matches!(
                    p.destination_says(applied(r)),
                    Ok(SourceInput::Applied { round, .. }) if round == r
                ));
            }
            p.source_says(piece(n)).expect("final piece");
            assert!(matches!(
                p.source_says(done(n, true)),
                Ok(DestinationInput::RoundDone {
                    final_round: true,
                    ..
                })
            ));
            p
        }
    }

    #[test]
    fn a_whole_migration_follows_the_rules() {
        let mut p = Pair::final_sent(3);
        assert_eq!(
            p.dst.state(),
            DestinationState::Building {
                rounds: 4,
                pages_follow: false
            }
        );
        assert_eq!(
            p.src.state(),
            SourceState::AwaitReady {
                pages_follow: false
            }
        );
        assert!(matches!(
            p.destination_says(ready()),
            Ok(SourceInput::Ready { pid: 42, .. })
        ));
        assert_eq!(p.source_says(Message::Commit), Ok(DestinationInput::Commit));
        assert!(!p.dst.expects_input());
        assert!(matches!(
            p.destination_says(running()),
            Ok(SourceInput::Running {
                pid: 99,
                ns_pid: 42,
                ..
            })
        ));
        assert_eq!(p.src.state(), SourceState::Ended);
        assert_eq!(p.dst.state(), DestinationState::Ended);
        assert_eq!(p.src.rounds_applied(), 3);
    }

    #[test]
    fn streamed_pages_follow_a_final_round_before_ready_and_never_after() {
        let pages = || Message::Pages {
            start: 0x1000,
            data: vec![0; 4096],
        };
        // Round 0 with pages to follow.
        let streamed = |final_round| Message::RoundDone {
            round: 0,
            final_round,
            files: Vec::new(),
            pages_follow: true,
        };
        // Both in their streaming state, round 0's data sent.
        let receiving = || {
            let mut p = Pair::started();
            p.source_says(piece(0)).expect("piece");
            p
        };
        let mut p = receiving();
        // Pages follow only a final round.
        assert!(p.src.send(&streamed(false)).is_err());
        assert!(p.dst.receive(streamed(false)).is_err());
        assert_eq!(p.dst.state(), DestinationState::Broken);

        let mut p = receiving();
        p.source_says(streamed(true))
            .expect("final round, pages follow");
        for _ in 0..3 {
            assert!(matches!(
                p.source_says(pages()),
                Ok(DestinationInput::Pages { start: 0x1000, .. })
            ));
        }
        assert_eq!(
            p.source_says(Message::PagesOf { pid: 42 }),
            Ok(DestinationInput::PagesOf { pid: 42 })
        );
        assert!(matches!(
            p.source_says(Message::ZstdPages {
                start: 0x3000,
                pages: 2,
                data: vec![1, 2]
            }),
            Ok(DestinationInput::ZstdPages { pages: 2, .. })
        ));
        assert_eq!(
            p.source_says(Message::ZeroPages {
                start: 0x2000,
                pages: 3
            }),
            Ok(DestinationInput::ZeroPages {
                start: 0x2000,
                pages: 3
            })
        );
        // The source may still give up, its program untouched.
        let mut q = receiving();
        q.source_says(streamed(true)).expect("final");
        assert!(matches!(
            q.source_says(abort()),
            Err(ProtocolError::Aborted(_))
        ));
        // Once ready, no page comes any more, and none goes after Running.
        p.destination_says(ready()).expect("ready");
        assert!(p.src.send(&pages()).is_err());
        p.source_says(Message::Commit).expect("commit");
        p.destination_says(running()).expect("running");
        assert_eq!(p.src.state(), SourceState::Ended);
        assert!(p.src.send(&pages()).is_err());
        // A destination that is ready refuses a page sent anyway.
        q = receiving();
        q.source_says(streamed(true)).expect("final");
        q.destination_says(ready()).expect("ready");
        assert!(q.dst.receive(pages()).is_err());
    }

    #[test]
    fn a_final_round_without_streamed_pages_takes_none_before_ready() {
        let mut p = Pair::final_sent(1);
        let pages = Message::Pages {
            start: 0x1000,
            data: vec![0; 4096],
        };
        assert!(p.src.send(&pages).is_err());
        assert!(p.dst.receive(pages).is_err());
    }

    #[test]
    fn post_copy_runs_after_running_until_the_destination_says_done() {
        let mut p = Pair::final_sent(1);
        p.src.owe_pages();
        p.dst.owe_pages();
        p.destination_says(ready()).expect("ready");
        // Pages owed may not travel before the commit.
        let pages = || Message::Pages {
            start: 0x1000,
            data: vec![0; 4096],
        };
        assert!(p.src.send(&pages()).is_err());
        p.source_says(Message::Commit).expect("commit");
        p.destination_says(running()).expect("running");
        assert_eq!(p.src.state(), SourceState::PostCopy);
        assert_eq!(p.dst.state(), DestinationState::PostCopy);
        assert!(p.dst.expects_input());
        assert!(matches!(
            p.source_says(pages()),
            Ok(DestinationInput::Pages { start: 0x1000, .. })
        ));
        assert_eq!(
            p.destination_says(Message::PageWant {
                addrs: vec![0x2000]
            }),
            Ok(SourceInput::Want {
                addrs: vec![0x2000]
            })
        );
        // The source can no longer abort: the program runs there.
        assert!(p.dst.receive(abort()).is_err());
        let mut p = {
            let mut q = Pair::final_sent(0);
            q.src.owe_pages();
            q.dst.owe_pages();
            q.destination_says(ready()).expect("ready");
            q.source_says(Message::Commit).expect("commit");
            q.destination_says(running()).expect("running");
            q
        };
        p.source_says(pages()).expect("pages");
        assert_eq!(
            p.destination_says(Message::PostCopyDone {
                tally: PostCopyTally {
                    pages: 1,
                    ..Default::default()
                }
            }),
            Ok(SourceInput::PostCopyDone {
                tally: PostCopyTally {
                    pages: 1,
                    ..Default::default()
                }
            })
        );
        assert_eq!(p.src.state(), SourceState::Ended);
        assert_eq!(p.dst.state(), DestinationState::Ended);
        assert!(p.src.send(&pages()).is_err());
    }

    #[test]
    fn post_copy_messages_are_refused_without_pages_owed() {
        let mut p = Pair::final_sent(0);
        p.destination_says(ready()).expect("ready");
        p.source_says(Message::Commit).expect("commit");
        p.destination_says(running()).expect("running");
        let want = Message::PageWant { addrs: vec![0] };
        assert!(p.dst.send(&want).is_err());
        assert!(p.src.receive(want).is_err());
    }

    #[test]
    fn a_final_round_alone_is_a_whole_migration() {
        let mut p = Pair::final_sent(0);
        p.destination_says(ready()).expect("ready");
        p.source_says(Message::Commit).expect("commit");
        p.destination_says(running()).expect("running");
    }

    #[test]
    fn another_protocol_version_is_refused_by_both_ends() {
        let mut dst = Destination::new();
        let e = dst.receive(hello(PROTOCOL_VERSION + 1)).unwrap_err();
        assert!(
            matches!(e, ProtocolError::Version { theirs, .. } if theirs == PROTOCOL_VERSION + 1)
        );
        assert!(e.to_string().contains("is not supported"), "{e}");
        // A refusal can still be sent, once; nothing else.
        assert!(dst.send(&welcome()).is_err());
        let refused = Message::Refused {
            reason: e.to_string(),
        };
        dst.send(&refused).expect("the refusal");
        assert!(dst.send(&refused).is_err());

        let mut src = Source::new();
        src.send(&hello(PROTOCOL_VERSION)).expect("hello");
        let e = src
            .receive(Message::Welcome {
                protocol: 1,
                tern_version: "old".into(),
            })
            .unwrap_err();
        assert!(matches!(e, ProtocolError::Version { theirs: 1, .. }));
    }

    #[test]
    fn destination_refuses_messages_out_of_order() {
        // Anything but Hello or Ask first.
        let mut d = Destination::new();
        assert_eq!(
            d.receive(piece(0)),
            Err(ProtocolError::Unexpected {
                expected: "Hello or Ask",
                got: "FileData"
            })
        );
        // Data of a round not current.
        let mut p = Pair::started();
        assert!(matches!(
            p.dst.receive(piece(1)),
            Err(ProtocolError::WrongRound {
                got: 1,
                expected: 0,
                ..
            })
        ));
        assert!(
            !p.dst.expects_input(),
            "a broken session takes nothing more"
        );
        assert_eq!(p.dst.state(), DestinationState::Broken);
        assert!(p.dst.send(&applied(0)).is_err());
        // A RoundDone of another round.
        let mut p = Pair::started();
        p.source_says(done(0, false)).expect("round 0");
        assert!(matches!(
            p.dst.receive(done(0, false)),
            Err(ProtocolError::WrongRound {
                got: 0,
                expected: 1,
                ..
            })
        ));
        // Commit before the final round, and before Ready.
        let mut p = Pair::started();
        assert!(matches!(
            p.dst.receive(Message::Commit),
            Err(ProtocolError::Unexpected { got: "Commit", .. })
        ));
        let mut p = Pair::final_sent(1);
        assert!(matches!(
            p.dst.receive(Message::Commit),
            Err(ProtocolError::Unexpected { got: "Commit", .. })
        ));
        // A second Hello, and a destination's message sent back.
        let mut p = Pair::started();
        assert!(p.dst.receive(hello(PROTOCOL_VERSION)).is_err());
        let mut p = Pair::started();
        assert!(p.dst.receive(ready()).is_err());
    }

    #[test]
    fn abort_ends_every_state_before_commit_and_none_after() {
        let states: Vec<Box<dyn Fn() -> Pair>> = vec![
            Box::new(Pair::started),
            Box::new(|| {
                let mut p = Pair::started();
                p.source_says(piece(0)).expect("piece");
                p
            }),
            Box::new(|| Pair::final_sent(2)),
            Box::new(|| {
                let mut p = Pair::final_sent(1);
                p.destination_says(ready()).expect("ready");
                p
            }),
        ];
        for make in &states {
            let mut p = make();
            let state = p.dst.state();
            assert_eq!(
                p.source_says(abort()),
                Err(ProtocolError::Aborted("gave up".into())),
                "in {state:?}"
            );
            assert_eq!(p.dst.state(), DestinationState::Ended);
        }
        let mut p = Pair::final_sent(0);
        p.destination_says(ready()).expect("ready");
        p.source_says(Message::Commit).expect("commit");
        assert!(p.src.send(&abort()).is_err(), "no Abort after Commit");
        assert!(p.dst.receive(abort()).is_err());
    }

    #[test]
    fn destination_may_not_answer_out_of_turn() {
        let mut p = Pair::started();
        // Ready before the final round, RoundApplied of a round not received.
        assert!(matches!(
            p.dst.send(&ready()),
            Err(ProtocolError::OutOfTurn { what: "Ready", .. })
        ));
        assert!(p.dst.send(&applied(0)).is_err());
        p.source_says(done(0, false)).expect("round 0");
        p.source_says(done(1, false)).expect("round 1");
        assert!(p.dst.send(&applied(1)).is_err(), "round 1 before round 0");
        p.dst.send(&applied(0)).expect("round 0 applied");
        // Running before Commit.
        let mut p = Pair::final_sent(0);
        assert!(p.dst.send(&running()).is_err());
        // A refusal is always allowed until the end, once.
        let refused = Message::Refused {
            reason: "no".into(),
        };
        p.dst.send(&refused).expect("refused");
        assert!(p.dst.send(&refused).is_err());
    }

    #[test]
    fn source_checks_the_destination_answers() {
        // Ready before the final round was sent.
        let mut p = Pair::started();
        p.source_says(done(0, false)).expect("round 0");
        assert!(matches!(
            p.src.receive(ready()),
            Err(ProtocolError::Unexpected { got: "Ready", .. })
        ));
        // RoundApplied of a round never sent, or out of order.
        let mut p = Pair::started();
        assert!(matches!(
            p.src.receive(applied(0)),
            Err(ProtocolError::WrongRound { got: 0, .. })
        ));
        let mut p = Pair::started();
        p.source_says(done(0, false)).expect("round 0");
        p.source_says(done(1, false)).expect("round 1");
        assert!(matches!(
            p.src.receive(applied(1)),
            Err(ProtocolError::WrongRound {
                got: 1,
                expected: 0,
                ..
            })
        ));
        // Running before Commit; anything but Running after it.
        let mut p = Pair::final_sent(0);
        assert!(p.src.receive(running()).is_err());
        let mut p = Pair::final_sent(0);
        p.destination_says(ready()).expect("ready");
        p.source_says(Message::Commit).expect("commit");
        assert!(matches!(
            p.src.receive(applied(0)),
            Err(ProtocolError::Unexpected {
                expected: "Running",
                ..
            })
        ));
        // A refusal in any state is the destination's reason.
        for make in [Pair::started, || Pair::final_sent(1)] {
            let mut p = make();
            assert_eq!(
                p.src.receive(Message::Refused {
                    reason: "disk full".into()
                }),
                Err(ProtocolError::Refused("disk full".into()))
            );
        }
    }

    #[test]
    fn source_may_not_send_out_of_turn() {
        let mut s = Source::new();
        assert!(
            s.round_sent(0, false, false).is_err(),
            "a round before Welcome"
        );
        let mut p = Pair::started();
        assert!(
            p.src.round_sent(1, false, false).is_err(),
            "round 1 before round 0"
        );
        p.src.round_sent(0, true, false).expect("final round 0");
        assert!(
            p.src.round_sent(1, false, false).is_err(),
            "a round after the final one"
        );
        assert!(
            matches!(
                p.src.send(&Message::Commit),
                Err(ProtocolError::OutOfTurn { what: "Commit", .. })
            ),
            "Commit before Ready"
        );
    }

    #[test]
    fn an_ask_gets_one_outcome() {
        let mut d = Destination::new();
        assert_eq!(
            d.receive(Message::Ask {
                protocol: PROTOCOL_VERSION,
                session: 9
            }),
            Ok(DestinationInput::Ask { session: 9 })
        );
        assert!(d.send(&welcome()).is_err());
        let outcome = Message::Outcome {
            session: 9,
            outcome: SessionOutcome::Discarded,
        };
        d.send(&outcome).expect("outcome");
        assert!(d.send(&outcome).is_err());
        assert_eq!(
            outcome_of(9, outcome.clone()),
            Ok(SessionOutcome::Discarded)
        );
        assert_eq!(
            outcome_of(8, outcome),
            Err(ProtocolError::WrongSession { asked: 8, got: 9 })
        );
        assert!(outcome_of(9, welcome()).is_err());
    }
}
