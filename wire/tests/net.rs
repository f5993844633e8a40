//! The migration channel: authentication, integrity, limits, credential
//! files. Runs over real TCP on loopback.

use std::time::Instant;
use tern_wire::net::{self, Key, Message, NetError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// A server that completes the handshake with `key` and reads one message.
async fn serve_one(
    key: &Key,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<net::Result<Message>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let key = key.clone();
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.expect("accept");
        let (_tx, mut rx) = net::handshake(s, &key, false).await?;
        rx.recv().await
    });
    (addr, task)
}

/// A man in the middle between the returned client stream and the server
/// at `upstream`: each byte the client sends passes through `edit(offset,
/// byte)`; the task returns every byte it forwarded upstream.
async fn relay(
    upstream: std::net::SocketAddr,
    mut edit: impl FnMut(usize, &mut u8) + Send + 'static,
) -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
    let (client_side, mid_in) = pair().await;
    let up = TcpStream::connect(upstream).await.expect("connect");
    let task = tokio::spawn(async move {
        let (mut cr, mut cw) = tokio::io::split(mid_in);
        let (mut ur, mut uw) = tokio::io::split(up);
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut ur, &mut cw).await;
        });
        let mut forwarded = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for (i, b) in buf[..n].iter_mut().enumerate() {
                edit(forwarded.len() + i, b);
            }
            forwarded.extend_from_slice(&buf[..n]);
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        down.abort();
        forwarded
    });
    (client_side, task)
}

#[test]
fn messages_cross_intact_and_fast() {
    rt().block_on(async {
        let key = Key::generate().expect("key");
        let (a, b) = pair().await;
        let k2 = key.clone();
        let server = tokio::spawn(async move {
            let (_tx, mut rx) = net::handshake(b, &k2, false)
                .await
                .expect("server handshake");
            let mut total = 0usize;
            loop {
                match rx.recv().await.expect("recv") {
                    Message::FileData { data, offset, .. } => {
                        assert_eq!(offset as usize, total);
                        assert!(data.iter().all(|&x| x == (offset % 251) as u8));
                        total += data.len();
                    }
                    Message::Commit => return total,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let (mut tx, _rx) = net::handshake(a, &key, true)
            .await
            .expect("client handshake");
        let t = Instant::now();
        let pieces = 64usize;
        for i in 0..pieces {
            let offset = (i * net::FILE_PIECE) as u64;
            tx.send(&Message::FileData {
                round: 0,
                name: "pages.img".into(),
                offset,
                data: vec![(offset % 251) as u8; net::FILE_PIECE],
            })
            .await
            .expect("send");
        }
        tx.send(&Message::Commit).await.expect("send commit");
        let total = server.await.expect("server task");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(total, pieces * net::FILE_PIECE);
        eprintln!(
            "channel: {} MiB in {:.0} ms = {:.0} MB/s (encrypted, loopback)",
            total >> 20,
            secs * 1e3,
            total as f64 / secs / 1e6
        );
    });
}

#[test]
fn wrong_key_is_refused_at_the_handshake() {
    rt().block_on(async {
        let (a, b) = pair().await;
        let (k1, k2) = (Key::generate().expect("key"), Key::generate().expect("key"));
        let server = tokio::spawn(async move { net::handshake(b, &k2, false).await.map(|_| ()) });
        let client = net::handshake(a, &k1, true).await.map(|_| ());
        let server = server.await.expect("server task");
        assert!(
            matches!(server, Err(NetError::Auth(_))),
            "server: {server:?}"
        );
        assert!(
            matches!(client, Err(NetError::Auth(_))),
            "client: {client:?}"
        );
    });
}

#[test]
fn garbage_instead_of_a_handshake_is_refused() {
    rt().block_on(async {
        let (mut a, b) = pair().await;
        let key = Key::generate().expect("key");
        let server = tokio::spawn(async move { net::handshake(b, &key, false).await.map(|_| ()) });
        a.write_all(&[0, 48]).await.expect("write");
        a.write_all(&[7u8; 48]).await.expect("write");
        let r = server.await.expect("server task");
        assert!(matches!(r, Err(NetError::Auth(_))), "{r:?}");
    });
}

/// A byte flipped on the wire after the handshake: the receiver refuses the
/// message instead of using it.
#[test]
fn tampered_message_is_refused() {
    rt().block_on(async {
        let key = Key::generate().expect("key");
        let (server_addr, server) = serve_one(&key).await;
        // The client's handshake frame is 2 + 48 bytes; flip a byte well
        // inside the first transport message that follows.
        let (client_side, relay) = relay(server_addr, |at, b| {
            if at == 50 + 20 {
                *b ^= 0x40;
            }
        })
        .await;
        let (mut tx, _rx) = net::handshake(client_side, &key, true)
            .await
            .expect("client handshake");
        tx.send(&Message::Abort {
            reason: "x".repeat(200),
        })
        .await
        .expect("send");
        let got = server.await.expect("server task");
        assert!(matches!(got, Err(NetError::Decrypt)), "{got:?}");
        relay.abort();
    });
}

#[test]
fn oversized_message_is_refused_before_allocation() {
    rt().block_on(async {
        let key = Key::generate().expect("key");
        let (server_addr, server) = serve_one(&key).await;
        let a = TcpStream::connect(server_addr).await.expect("connect");
        let (mut tx, rx) = net::handshake(a, &key, true)
            .await
            .expect("client handshake");
        let r = tx
            .send(&Message::FileData {
                round: 0,
                name: "pages.img".into(),
                offset: 0,
                data: vec![0u8; net::MAX_MESSAGE + 1],
            })
            .await;
        assert!(matches!(r, Err(NetError::TooLarge { .. })), "{r:?}");
        // Nothing was sent: closing the connection ends the server's wait.
        drop((tx, rx));
        let got = server.await.expect("server task");
        assert!(got.is_err());
    });
}

#[test]
fn credential_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k");
    let key = Key::generate().expect("key");
    key.write_new(&path).expect("write");
    assert!(key.write_new(&path).is_err(), "must not overwrite");
    Key::load(&path).expect("load");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = Key::load(&path).expect_err("loose permissions must be refused");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&path, "tern-key-v1 zz\n").expect("write");
    assert!(Key::load(&path).is_err());
    assert_eq!(
        format!("{key:?}"),
        "Key(<secret>)",
        "no secret in Debug output"
    );
}

/// Bytes recorded from a real session and played again to a server that
/// holds the same key: its fresh ephemeral key makes the replayed transport
/// messages undecryptable, so the replay is refused before any message is
/// parsed.
#[test]
fn replayed_session_is_refused() {
    rt().block_on(async {
        let key = Key::generate().expect("key");
        // Session 1, through a recorder.
        let (server_addr, server1) = serve_one(&key).await;
        let (client_side, recorder) = relay(server_addr, |_, _| {}).await;
        let (mut tx, rx) = net::handshake(client_side, &key, true)
            .await
            .expect("client");
        tx.send(&Message::Commit).await.expect("send");
        let got = server1.await.expect("server 1");
        assert!(matches!(got, Ok(Message::Commit)), "{got:?}");
        drop((tx, rx));
        let recorded = recorder.await.expect("recorder");
        assert!(recorded.len() > 50, "nothing recorded");

        // Session 2: the same bytes, to a server with the same key.
        let (server_addr, server2) = serve_one(&key).await;
        let mut replayer = TcpStream::connect(server_addr).await.expect("connect");
        replayer.write_all(&recorded).await.expect("replay");
        let r = server2.await.expect("server 2");
        assert!(
            matches!(r, Err(NetError::Decrypt) | Err(NetError::Auth(_))),
            "a replayed session must be refused: {r:?}"
        );
    });
}

mod decoder_mutations {
    use proptest::prelude::*;
    use tern_wire::net::{FileSummary, Message, SessionOutcome};

    pub(super) fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                protocol: 1,
                tern_version: "0.1.0".into(),
                pid: 4242,
                comm: "counter".into(),
                kernel_release: "6.18.44".into(),
                session: 0x0123_4567_89ab_cdef,
            },
            Message::Ask {
                protocol: 2,
                session: u64::MAX,
            },
            Message::Outcome {
                session: 7,
                outcome: SessionOutcome::Running {
                    pid: 4242,
                    ns_pid: 1,
                },
            },
            Message::FileData {
                round: 3,
                name: "pages.img".into(),
                offset: 4096,
                data: (0..300u32).map(|i| i as u8).collect(),
            },
            Message::RoundDone {
                round: 3,
                final_round: true,
                files: vec![FileSummary {
                    name: "core.img".into(),
                    size: 77,
                    xxh3: 0xdead_beef,
                }],
                pages_follow: false,
            },
            Message::Commit,
            Message::Running {
                pid: 1,
                ns_pid: 2,
                resume_ms: 0.5,
            },
            Message::Refused {
                reason: "busy".into(),
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Any bytes: the decoder answers (a message or an error), never
        /// panics, and what it accepts encodes back to a message that
        /// decodes the same.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = Message::decode(&bytes) {
                let again = m.encode().expect("re-encode");
                prop_assert_eq!(Message::decode(&again).expect("decode again"), m);
            }
        }

        /// Valid messages with one byte changed, or cut short: never a
        /// panic; a truncated message is never accepted as the original.
        #[test]
        fn mutated_messages_never_panic(which in 0usize..8, at in any::<usize>(), xor in 1u8..=255, cut in any::<usize>()) {
            let m = samples()[which].clone();
            let bytes = m.encode().expect("encode");
            let mut flipped = bytes.clone();
            let i = at % flipped.len();
            flipped[i] ^= xor;
            let _ = Message::decode(&flipped);
            let short = &bytes[..cut % bytes.len()];
            if let Ok(d) = Message::decode(short) {
                prop_assert_ne!(d, m);
            }
        }
    }
}

/// The encrypted framing under attack: a live session (handshake, then
/// every sample message) passes through an in-memory relay that changes
/// one byte of what the client sends, or cuts the stream there. The
/// receiver must take exactly the messages before the damage, then fail:
/// never accept a damaged message, never panic, never hang.
mod framing_mutations {
    use super::decoder_mutations::samples;
    use proptest::prelude::*;
    use std::time::Duration;
    use tern_wire::net::{self, Key, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Relay client -> server changing byte `at` (xor) or ending the
    /// stream there (`cut`); server -> client untouched. Returns how many
    /// client bytes passed.
    async fn relay(
        from_client: tokio::io::DuplexStream,
        to_server: tokio::io::DuplexStream,
        at: usize,
        xor: u8,
        cut: bool,
    ) -> usize {
        let (mut cr, mut cw) = tokio::io::split(from_client);
        let (mut sr, mut sw) = tokio::io::split(to_server);
        let mut back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        });
        let mut seen = 0usize;
        let mut buf = vec![0u8; 8192];
        loop {
            // The server hanging up closes the client's side too, as TCP
            // would.
            let n = tokio::select! {
                r = cr.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = &mut back => break,
            };
            let chunk = &mut buf[..n];
            if (seen..seen + n).contains(&at) {
                if cut {
                    let _ = sw.write_all(&chunk[..at - seen]).await;
                    seen = at;
                    break;
                }
                chunk[at - seen] ^= xor;
            }
            seen += n;
            if sw.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
        back.abort();
        seen
    }

    /// What the server took before its first error.
    async fn session(at: usize, xor: u8, cut: bool) -> (Vec<Message>, usize) {
        let key = Key::generate().expect("key");
        let server_key = key.clone();
        let (client_io, from_client) = tokio::io::duplex(1 << 16);
        let (to_server, server_io) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(relay(from_client, to_server, at, xor, cut));
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            if let Ok((_tx, mut rx)) = net::handshake(server_io, &server_key, false).await {
                while let Ok(m) = rx.recv().await {
                    got.push(m);
                }
            }
            got
        });
        if let Ok((mut tx, _rx)) = net::handshake(client_io, &key, true).await {
            for m in samples() {
                if tx.send(&m).await.is_err() {
                    break;
                }
            }
            let _ = tx.shutdown().await;
        }
        let got = server.await.expect("server task");
        let passed = relay.await.expect("relay task");
        (got, passed)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn damaged_streams_are_refused_not_misread(at in 0usize..2400, xor in 1u8..=255, cut in any::<bool>()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let run = |at, xor, cut| {
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), session(at, xor, cut)).await
                })
                .expect("the session hung")
            };
            // An undamaged session: how many bytes the client sends in all
            // (the same every time: the sizes are fixed).
            let (whole, total) = run(usize::MAX, 1, false);
            let (got, _) = run(at, xor, cut);
            let sent = samples();
            prop_assert_eq!(&whole, &sent);
            prop_assert!(got.len() <= sent.len());
            prop_assert_eq!(&got[..], &sent[..got.len()], "a message was misread");
            // The damage fell inside the session: what it hit is refused.
            if at < total {
                prop_assert!(got.len() < sent.len(), "a damaged session was taken whole (at {}, {} bytes in all)", at, total);
            }
        }
    }
}
