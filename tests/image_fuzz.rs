//! Hostile images: a real image (`tern dump` of a running program) is
//! damaged thousands of ways, one file at a time (a byte changed, a byte
//! range zeroed or overwritten with random bytes, the file cut short,
//! garbage appended), and read the way `tern restore` reads it: every
//! record decoded and validated (`Image::load`), the page table and every
//! chunk file read to the end. Each damaged copy must be refused with an
//! error naming the damaged file, never accepted, never a panic, never a
//! hang (the whole run is timed). The undamaged copy must read fine.
//!
//! The mutations come from a small xorshift generator; its seed is printed
//! (set TERN_FUZZ_SEED to replay a run).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const CASES: usize = 10_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Read everything `tern restore` would read; `Err` is the refusal.
fn read_whole_image(dir: &Path) -> Result<(), String> {
    let image = tern_restorer::Image::load(dir).map_err(|e| e.to_string())?;
    image.ancestors().map_err(|e| e.to_string())?;
    tern_wire::hashes::read_page_hashes(&dir.join(tern_wire::HASHES_FILE))
        .map_err(|e| e.to_string())?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == tern_wire::PAGES_FILE || name.starts_with("file-") {
            let mut r = tern_wire::ChunkReader::open(&path).map_err(|e| e.to_string())?;
            while r.next_into(&mut out).map_err(|e| e.to_string())?.is_some() {}
        }
    }
    Ok(())
}

/// Damage `bytes` one way; returns a description, or None if it changed
/// nothing.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> Option<String> {
    let len = bytes.len();
    let before = bytes.clone();
    let what = match rng.below(5) {
        0 if len > 0 => {
            let at = rng.below(len);
            let xor = (rng.below(255) + 1) as u8;
            bytes[at] ^= xor;
            format!("byte {at} xor {xor:#x}")
        }
        1 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            bytes[at..at + n].fill(0);
            format!("{n} bytes zeroed at {at}")
        }
        2 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            for b in &mut bytes[at..at + n] {
                *b = rng.next() as u8;
            }
            format!("{n} random bytes at {at}")
        }
        3 if len > 0 => {
            let to = rng.below(len);
            bytes.truncate(to);
            format!("cut to {to} of {len} bytes")
        }
        _ => {
            let n = 1 + rng.below(64);
            for _ in 0..n {
                bytes.push(rng.next() as u8);
            }
            format!("{n} bytes appended")
        }
    };
    (*bytes != before).then_some(what)
}

#[test]
fn damaged_images_are_always_refused() {
    let test = "damaged_images_are_always_refused";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "sleeper");
    let mut s = Session::start(dir, Cmd::new(exe).arg("rel"), Stdio::null());
    s.wait_seq(3);
    s.dump();
    let work = s.dir.join("fuzz");
    copy_tree(&s.images, &work);
    read_whole_image(&work).unwrap_or_else(|e| panic!("the undamaged image: {e}"));

    let originals: Vec<(PathBuf, Vec<u8>)> = files_under(&work)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read image file");
            (p, b)
        })
        .collect();
    assert!(originals.len() >= 5, "too few image files: {originals:?}");
    let seed = std::env::var("TERN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9e37_79b9_7f4a_7c15)
        });
    eprintln!("{test}: seed {seed} (TERN_FUZZ_SEED to replay)");
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut tried = 0;
    for case in 0..CASES {
        let (path, original) = &originals[rng.below(originals.len())];
        let mut bytes = original.clone();
        let Some(what) = mutate(&mut rng, &mut bytes) else {
            continue;
        };
        std::fs::write(path, &bytes).expect("write damaged file");
        let t = Instant::now();
        let r = read_whole_image(&work);
        slowest = slowest.max(t.elapsed());
        std::fs::write(path, original).expect("restore file");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match r {
            Ok(()) => panic!(
                "case {case} (seed {seed}): {} with {what} was accepted",
                name
            ),
            Err(e) => assert!(
                e.contains(name),
                "case {case} (seed {seed}): the refusal of {name} with {what} does not name it: {e}"
            ),
        }
        tried += 1;
    }
    let total = t0.elapsed();
    eprintln!(
        "{test}: {tried} damaged images refused in {:.2} s (slowest read {:.1} ms)",
        total.as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
    assert!(tried > CASES / 2, "only {tried} mutations changed anything");
    assert!(
        slowest < Duration::from_secs(2),
        "one damaged image took {slowest:?} to refuse"
    );
    read_whole_image(&work).unwrap_or_else(|e| panic!("the undamaged image after the run: {e}"));
}
