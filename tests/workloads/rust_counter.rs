//! rust_counter: a Rust workload for tern's dump/restore tests.
//!
//! Keeps a `HashMap` of 50,000 entries, a 4 MiB `Vec<u64>` filled with a
//! known pattern and a `Vec` history of every checksum. Every ~10 ms it
//! rewrites some map entries and buffer words, keeps the checksum up to date
//! incrementally, verifies a rotating slice of the buffer, and every 16 ticks
//! recomputes everything from scratch. It prints "tick N checksum X"; on any
//! mismatch it prints a CORRUPT line and exits 3.

use std::collections::HashMap;
use std::process::exit;
use std::thread::sleep;
use std::time::Duration;

const ENTRIES: u64 = 50_000;
const WORDS: usize = 512 * 1024; // 4 MiB of u64
const SLICE: usize = 32 * 1024;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn corrupt(what: String) -> ! {
    println!("CORRUPT {what}");
    exit(3);
}

fn main() {
    let mut map: HashMap<u64, u64> = (0..ENTRIES).map(|k| (k, mix(k))).collect();
    let mut checksum = map.values().fold(0u64, |a, v| a.wrapping_add(*v));
    // words[i] == mix(i as u64 ^ stamps[i]); stamps change as words are rewritten.
    let mut stamps = vec![0u64; WORDS];
    let mut words: Vec<u64> = (0..WORDS).map(|i| mix(i as u64)).collect();
    let mut history: Vec<u64> = Vec::new();
    let mut cursor = 0usize;
    let mut tick = 0u64;

    loop {
        tick += 1;
        for j in 0..64u64 {
            let k = (tick * 7919 + j * 104_729) % ENTRIES;
            let old = map[&k];
            let new = mix(old ^ tick);
            map.insert(k, new);
            checksum = checksum.wrapping_sub(old).wrapping_add(new);
        }
        for j in 0..256u64 {
            let i = ((tick * 31 + j * 65_537) % WORDS as u64) as usize;
            stamps[i] = tick;
            words[i] = mix(i as u64 ^ tick);
        }
        for _ in 0..SLICE {
            let want = mix(cursor as u64 ^ stamps[cursor]);
            if words[cursor] != want {
                corrupt(format!(
                    "tick {tick} word {cursor} want {want:016x} got {:016x}",
                    words[cursor]
                ));
            }
            cursor = (cursor + 1) % WORDS;
        }
        history.push(checksum);
        if tick & 15 == 0 {
            // every 16 ticks
            let full = map.values().fold(0u64, |a, v| a.wrapping_add(*v));
            if full != checksum || map.len() as u64 != ENTRIES {
                corrupt(format!(
                    "tick {tick} checksum {checksum:016x} recomputed {full:016x} len {}",
                    map.len()
                ));
            }
            if history.len() as u64 != tick || history.last() != Some(&checksum) {
                corrupt(format!("tick {tick} history has {} entries", history.len()));
            }
        }
        println!("tick {tick} checksum {checksum:016x}");
        sleep(Duration::from_millis(10));
    }
}
