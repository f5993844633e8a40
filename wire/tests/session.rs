//! The protocol state machines over the real encrypted channel, on an
//! in-memory duplex stream (no root, no sockets): a source driven by
//! `Source` against scripted destinations that refuse, die at each step or
//! answer out of order, and a destination driven by `Destination` against
//! a source that skips a round.

use tern_wire::net::{self, Key, Message, Receiver, Sender, PROTOCOL_VERSION};
use tern_wire::session::{
    Destination, DestinationInput, ProtocolError, Source, SourceInput, SourceState,
};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

type Tx = Sender<WriteHalf<DuplexStream>>;
type Rx = Receiver<ReadHalf<DuplexStream>>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Both ends of an authenticated channel.
async fn channel() -> ((Tx, Rx), (Tx, Rx)) {
    let key = Key::generate().expect("key");
    let (a, b) = tokio::io::duplex(1 << 16);
    let (src, dst) = tokio::join!(
        net::handshake(a, &key, true),
        net::handshake(b, &key, false)
    );
    (
        src.expect("source handshake"),
        dst.expect("destination handshake"),
    )
}

fn hello() -> Message {
    Message::Hello {
        protocol: PROTOCOL_VERSION,
        tern_version: "test".into(),
        pid: 42,
        comm: "counter".into(),
        kernel_release: "6.18".into(),
        session: 7,
    }
}

fn welcome() -> Message {
    Message::Welcome {
        protocol: PROTOCOL_VERSION,
        tern_version: "test".into(),
    }
}

fn round(round: u32, final_round: bool) -> [Message; 2] {
    [
        Message::FileData {
            round,
            name: "pages.img".into(),
            offset: 0,
            data: vec![round as u8; 64],
        },
        Message::RoundDone {
            round,
            final_round,
            files: Vec::new(),
            pages_follow: false,
        },
    ]
}

/// How far a migration's source gets: it sends two pre-copy rounds and a
/// final one, waiting for each answer, then commits. Returns the state it
/// ended in and how it ended.
/// Its halves of the channel are dropped when it ends, as a real source's
/// are: a destination still reading sees the link close.
async fn run_source(mut tx: Tx, mut rx: Rx) -> (SourceState, Result<(), String>) {
    let mut proto = Source::new();
    let r = drive_source(&mut proto, &mut tx, &mut rx).await;
    (proto.state(), r)
}

async fn drive_source(proto: &mut Source, tx: &mut Tx, rx: &mut Rx) -> Result<(), String> {
    async fn send(proto: &mut Source, tx: &mut Tx, m: Message) -> Result<(), String> {
        proto.send(&m).map_err(|e| e.to_string())?;
        tx.send(&m).await.map_err(|e| format!("send: {e}"))
    }
    async fn answer(proto: &mut Source, rx: &mut Rx) -> Result<SourceInput, String> {
        let m = rx.recv().await.map_err(|e| format!("link: {e}"))?;
        proto.receive(m).map_err(|e| e.to_string())
    }
    send(proto, tx, hello()).await?;
    answer(proto, rx).await?;
    for r in 0..3 {
        for m in round(r, r == 2) {
            send(proto, tx, m).await?;
        }
        answer(proto, rx).await?;
    }
    send(proto, tx, Message::Commit).await?;
    match answer(proto, rx).await? {
        SourceInput::Running { .. } => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// A destination that plays `answers` in turn, each after reading what
/// the source sends up to its next wait (Hello; each round; Commit), and
/// hangs up after the last.
async fn scripted_destination(tx: &mut Tx, rx: &mut Rx, answers: Vec<Message>) {
    // Messages the source sends before each of its waits.
    let sends_before_wait = [1, 2, 2, 2, 1];
    for (answer, n) in answers.into_iter().zip(sends_before_wait) {
        for _ in 0..n {
            if rx.recv().await.is_err() {
                return;
            }
        }
        if tx.send(&answer).await.is_err() {
            return;
        }
    }
    let _ = tx.shutdown().await;
}

fn applied(round: u32) -> Message {
    Message::RoundApplied {
        round,
        pages: 1,
        ms: 0.1,
    }
}

fn full_script() -> Vec<Message> {
    vec![
        welcome(),
        applied(0),
        applied(1),
        Message::Ready { pid: 42, ms: 1.0 },
        Message::Running {
            pid: 99,
            ns_pid: 42,
            resume_ms: 0.1,
        },
    ]
}

fn source_against(script: Vec<Message>) -> (SourceState, Result<(), String>) {
    rt().block_on(async {
        let ((stx, srx), (mut dtx, mut drx)) = channel().await;
        let dst = scripted_destination(&mut dtx, &mut drx, script);
        let (out, ()) = tokio::join!(run_source(stx, srx), dst);
        out
    })
}

#[test]
fn a_well_behaved_destination_takes_the_whole_migration() {
    let (state, r) = source_against(full_script());
    assert_eq!(r, Ok(()));
    assert_eq!(state, SourceState::Ended);
}

#[test]
fn a_destination_that_dies_at_each_step_fails_the_source_there() {
    let script = full_script();
    let waits = [
        SourceState::AwaitWelcome,
        SourceState::Streaming { next: 1 },
        SourceState::Streaming { next: 2 },
        SourceState::AwaitReady {
            pages_follow: false,
        },
        SourceState::AwaitRunning,
    ];
    for (answered, want) in waits.iter().enumerate() {
        let (state, r) = source_against(script[..answered].to_vec());
        let e = r.expect_err("the destination hung up");
        assert!(e.starts_with("link:"), "after {answered} answers: {e}");
        assert_eq!(state, *want, "after {answered} answers");
    }
}

#[test]
fn a_refusal_at_each_step_is_the_destinations_reason() {
    for at in 0..5 {
        let mut script = full_script();
        script[at] = Message::Refused {
            reason: format!("no space at step {at}"),
        };
        let (state, r) = source_against(script);
        assert_eq!(
            r,
            Err(format!("the destination refused: no space at step {at}"))
        );
        assert_eq!(state, SourceState::Ended);
    }
}

#[test]
fn answers_out_of_order_are_refused_by_the_source() {
    let cases: Vec<(usize, Message, &str)> = vec![
        (0, applied(0), "expected Welcome, got RoundApplied"),
        (
            1,
            applied(1),
            "RoundApplied for round 1 while round 0 is current",
        ),
        (
            2,
            Message::Ready { pid: 1, ms: 1.0 },
            "expected RoundApplied, got Ready",
        ),
        (3, welcome(), "expected RoundApplied or Ready, got Welcome"),
        (4, applied(2), "expected Running, got RoundApplied"),
    ];
    for (at, wrong, want) in cases {
        let mut script = full_script();
        script[at] = wrong;
        let (_, r) = source_against(script);
        assert_eq!(r, Err(want.to_string()), "answer {at}");
    }
}

#[test]
fn a_destination_refuses_a_skipped_round_and_says_why() {
    rt().block_on(async {
        let ((mut stx, mut srx), (mut dtx, mut drx)) = channel().await;
        let destination = async {
            let mut proto = Destination::new();
            loop {
                let m = drx.recv().await.expect("from the source");
                match proto.receive(m) {
                    Ok(DestinationInput::Start { .. }) => {
                        proto.send(&welcome()).expect("welcome");
                        dtx.send(&welcome()).await.expect("send");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let refused = Message::Refused {
                            reason: e.to_string(),
                        };
                        proto.send(&refused).expect("a refusal is always allowed");
                        dtx.send(&refused).await.expect("send");
                        return e;
                    }
                }
            }
        };
        let source = async {
            let mut proto = Source::new();
            proto.send(&hello()).expect("hello");
            stx.send(&hello()).await.expect("send");
            let w = srx.recv().await.expect("welcome");
            proto.receive(w).expect("welcome accepted");
            // Round 1's data without round 0: a buggy or hostile source,
            // sent raw (its own machine would refuse to send it).
            assert!(proto.round_sent(1, false, false).is_err());
            for m in round(1, false) {
                stx.send(&m).await.expect("send");
            }
            let answer = srx.recv().await.expect("an answer");
            proto.receive(answer)
        };
        let (refused_with, answer) = tokio::join!(destination, source);
        assert_eq!(
            refused_with,
            ProtocolError::WrongRound {
                what: "file data",
                got: 1,
                expected: 0
            }
        );
        assert_eq!(
            answer,
            Err(ProtocolError::Refused(
                "file data for round 1 while round 0 is current".into()
            ))
        );
    });
}
