//! Property tests: write -> read is identity; flipped bytes and truncations
//! are refused with an error (never a panic, never wrong data).

use proptest::prelude::*;
use std::path::Path;
use tern_wire::record::{decode_record, encode_record};
use tern_wire::*;

fn arb_files() -> impl Strategy<Value = Files> {
    let fd = (
        0i32..1024,
        any::<bool>(),
        0u32..8,
        "[a-z/]{1,40}",
        any::<i32>(),
        any::<u64>(),
    )
        .prop_map(|(fd, cloexec, desc, path, flags, offset)| Fd {
            fd,
            cloexec,
            desc,
            kind: FdKind::Path {
                path: path.clone(),
                flags,
                offset,
                file: FileIdentity {
                    path,
                    dev: 1,
                    ino: offset ^ 7,
                    size: offset,
                    mtime_sec: 3,
                    mtime_nsec: 4,
                },
            },
        });
    proptest::collection::vec(fd, 0..20).prop_map(|mut fds| {
        // An established TCP connection: addresses of both families and
        // the repair state must come back bit for bit.
        fds.push(Fd {
            fd: 900,
            cloexec: true,
            desc: 900,
            kind: FdKind::Inet(InetSocket {
                family: 10,
                kind: 1,
                protocol: 6,
                flags: 0o4000,
                local: Some("[2001:db8::1]:8080".parse().expect("v6")),
                peer: Some("10.1.2.3:40000".parse().expect("v4")),
                state: InetState::Established(Box::new(TcpConnection {
                    send_seq: u32::MAX - 3,
                    recv_seq: 7,
                    send_queue: b"unacked".to_vec(),
                    unsent: 2,
                    recv_queue: b"unread".to_vec(),
                    mss: 1448,
                    wscale: Some((7, 9)),
                    sack: true,
                    timestamps: true,
                    timestamp: 123_456,
                    window: [1, 2, 3, 4, 5],
                })),
                options: vec![SockOpt {
                    level: 6,
                    name: 1,
                    value: 1i32.to_le_bytes().to_vec(),
                }],
            }),
        });
        Files {
            fds,
            pipes: vec![Pipe {
                id: 9,
                size: 65536,
                data: b"buffered".to_vec(),
            }],
            net_lock: Some("tern_lock_1".into()),
        }
    })
}

fn read_all_chunks(path: &Path, bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut r = ChunkReader::new(path, bytes)?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(key) = r.next_into(&mut buf)? {
        out.push((key, buf.clone()));
    }
    Ok(out)
}

fn write_chunks(codec: Codec, chunks: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pages.img");
    let mut w = ChunkWriter::create(&path, codec).expect("create");
    for (k, d) in chunks {
        w.write(*k, d).expect("write");
    }
    w.finish().expect("finish");
    std::fs::read(&path).expect("read back")
}

fn arb_chunks() -> impl Strategy<Value = Vec<(u64, Vec<u8>)>> {
    // Mix compressible (repeated) and random data.
    let data = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..5000),
        (any::<u8>(), 0usize..20000).prop_map(|(b, n)| vec![b; n]),
    ];
    proptest::collection::vec((any::<u64>().prop_map(|k| k >> 12 << 12), data), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn record_roundtrip(files in arb_files()) {
        let bytes = encode_record(RecordKind::Files, &files).unwrap();
        let back: Files = decode_record(Path::new("files.img"), RecordKind::Files, &bytes).unwrap();
        prop_assert_eq!(back, files);
    }

    #[test]
    fn record_flip_is_refused(files in arb_files(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encode_record(RecordKind::Files, &files).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let r: Result<Files> = decode_record(Path::new("files.img"), RecordKind::Files, &bytes);
        let err = r.expect_err("a flipped byte must be refused");
        prop_assert!(err.to_string().contains("files.img"), "{}", err);
    }

    #[test]
    fn record_truncation_is_refused(files in arb_files(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_record(RecordKind::Files, &files).unwrap();
        let n = cut.index(bytes.len());
        let r: Result<Files> = decode_record(Path::new("files.img"), RecordKind::Files, &bytes[..n]);
        prop_assert!(r.is_err());
    }

    #[test]
    fn record_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _: Result<Files> = decode_record(Path::new("x"), RecordKind::Files, &bytes);
        let _ = read_all_chunks(Path::new("x"), &bytes);
    }

    #[test]
    fn chunks_roundtrip(chunks in arb_chunks(), zstd in any::<bool>()) {
        let codec = if zstd { Codec::Zstd(1) } else { Codec::Raw };
        let bytes = write_chunks(codec, &chunks);
        let back = read_all_chunks(Path::new("pages.img"), &bytes).unwrap();
        let expected: Vec<(u64, Vec<u8>)> = chunks.into_iter().filter(|(_, d)| !d.is_empty()).collect();
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn chunks_flip_is_refused(chunks in arb_chunks(), zstd in any::<bool>(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let codec = if zstd { Codec::Zstd(1) } else { Codec::Raw };
        let mut bytes = write_chunks(codec, &chunks);
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let err = read_all_chunks(Path::new("pages.img"), &bytes).expect_err("flip must be refused");
        prop_assert!(err.to_string().contains("pages.img"), "{}", err);
    }

    #[test]
    fn chunks_truncation_is_refused(chunks in arb_chunks(), cut in any::<prop::sample::Index>()) {
        let bytes = write_chunks(Codec::Zstd(1), &chunks);
        let n = cut.index(bytes.len());
        prop_assert!(read_all_chunks(Path::new("pages.img"), &bytes[..n]).is_err());
    }
}

#[test]
fn wrong_version_and_kind_are_named() {
    let mut bytes = encode_record(RecordKind::Files, &Files::default()).unwrap();
    let e = decode_record::<Core>(Path::new("core.img"), RecordKind::Core, &bytes).unwrap_err();
    assert!(e.to_string().contains("expected a core record"), "{e}");
    // Bump the version and fix the header checksum: must be refused as a version.
    bytes[8] = 99;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..32]);
    bytes[32..40].copy_from_slice(&sum.to_le_bytes());
    let e = decode_record::<Files>(Path::new("files.img"), RecordKind::Files, &bytes).unwrap_err();
    assert!(e.to_string().contains("format version 99"), "{e}");
}

#[test]
fn oversized_chunk_header_is_refused_before_allocating() {
    let mut bytes = write_chunks(Codec::Raw, &[(0, vec![1u8; 100])]);
    // raw_len field of the first chunk header, then fix its checksum.
    let h = 24;
    bytes[h + 16..h + 20].copy_from_slice(&u32::MAX.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[h..h + 40]);
    bytes[h + 40..h + 48].copy_from_slice(&sum.to_le_bytes());
    let e = read_all_chunks(Path::new("pages.img"), &bytes).unwrap_err();
    assert!(e.to_string().contains("out of bounds"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A table delta takes the old table exactly to the new one, and does
    /// not fit any other table.
    #[test]
    fn table_delta_roundtrip(
        old in proptest::collection::btree_map(0u64..2000, any::<u64>(), 0..300),
        new in proptest::collection::btree_map(0u64..2000, any::<u64>(), 0..300),
    ) {
        let old: Vec<(u64, u64)> = old.into_iter().map(|(a, h)| (a * 4096, h)).collect();
        let new: Vec<(u64, u64)> = new.into_iter().map(|(a, h)| (a * 4096, h)).collect();
        let d = tern_wire::TableDelta::between(&old, &new);
        prop_assert_eq!(d.apply(&old), Some(new.clone()));
        prop_assert!(d.fits(&old));
        if !d.removed.is_empty() {
            // Without one of the entries it removes, it must not apply.
            let gone = d.removed[0];
            let other: Vec<(u64, u64)> = old.iter().copied().filter(|e| e.0 != gone).collect();
            prop_assert_eq!(d.apply(&other), None);
            prop_assert!(!d.fits(&other));
        }
        // Nor with an entry it does not know of.
        let extra = (1u64 << 40, 1);
        let mut more = old.clone();
        more.push(extra);
        prop_assert!(!d.fits(&more));
    }
}
