//! `tern bench` at a small size, to keep the command working: it must
//! migrate in both modes, print the table, and write JSON rows with the
//! documented fields and the two SVG charts. No timing is asserted (these
//! machines are noisy; the figures are for people to read).

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn bench_runs_and_writes_json_and_svg() {
    if !root_or_skip("bench_runs_and_writes_json_and_svg") {
        return;
    }
    let dir = TestDir::new("bench");
    let json = dir.join("bench.json");
    let svg = dir.join("svg");
    let a = args![
        "bench",
        "--sizes",
        "8",
        "--modes",
        "simple,live",
        "--policy",
        "adaptive",
        "--repeat",
        "1",
        "--json",
        &json,
        "--svg",
        &svg,
        "--dir",
        dir.join("work"),
    ];
    let out = run_tern(&dir, &a, Stdio::null());
    out.assert_ok("tern bench");
    assert!(
        out.stdout.contains("Downtime by process size") && out.stdout.contains("live/adaptive"),
        "no table printed:\n{}",
        out.stdout
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("bench.json")).expect("JSON");
    let rows = rows.as_array().expect("a list of rows");
    assert_eq!(rows.len(), 2, "one row per mode: {rows:?}");
    for r in rows {
        for field in [
            "size_mib",
            "mode",
            "downtime_ms",
            "dump_ms",
            "transfer_ms",
            "restore_ms",
            "observed_gap_ms",
            "rounds",
        ] {
            assert!(r.get(field).is_some(), "row lacks {field}: {r}");
        }
        assert_eq!(r["size_mib"].as_u64(), Some(8));
        assert!(r["downtime_ms"].as_f64().is_some_and(|d| d > 0.0));
        assert!(r["observed_gap_ms"].as_f64().is_some_and(|g| g > 0.0));
    }
    let live = rows.iter().find(|r| r["mode"] == "live").expect("live row");
    assert!(live["rounds"].as_u64().is_some_and(|n| n >= 1));
    for f in ["downtime.svg", "breakdown.svg"] {
        let text = std::fs::read_to_string(svg.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            text.starts_with("<svg") && text.contains("</svg>"),
            "{f} is not an SVG"
        );
    }
}

/// `tern bench --storage DIR` at a small size: dump and restore of the
/// sample program (which must go on after its restore: the bench checks
/// its heartbeats) next to `cp`, a table and JSON rows with every figure;
/// nothing left in DIR.
#[test]
fn bench_storage_compares_dump_and_restore_with_cp() {
    if !root_or_skip("bench_storage_compares_dump_and_restore_with_cp") {
        return;
    }
    let dir = TestDir::new("bench_storage");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).expect("storage dir");
    let json = dir.join("storage.json");
    let a = args![
        "bench",
        "--storage",
        &store,
        "--sizes",
        "8",
        "--repeat",
        "2",
        "--json",
        &json,
        "--dir",
        dir.join("work"),
    ];
    let out = run_tern(&dir, &a, Stdio::null());
    out.assert_ok("tern bench --storage");
    assert!(
        out.stdout.contains("Dump and restore next to cp") && out.stdout.contains("rest/cp"),
        "no table printed:\n{}",
        out.stdout
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("storage.json")).expect("JSON");
    let rows = rows.as_array().expect("a list of rows");
    assert_eq!(rows.len(), 1, "one row per size: {rows:?}");
    let r = &rows[0];
    assert_eq!(r["size_mib"].as_u64(), Some(8));
    for field in [
        "cp_ms",
        "dump_ms",
        "restore_ms",
        "dump_over_cp",
        "restore_over_cp",
    ] {
        assert!(
            r[field].as_f64().is_some_and(|v| v > 0.0),
            "row lacks a positive {field}: {r}"
        );
    }
    assert_eq!(r["runs"].as_array().map(Vec::len), Some(2), "{r}");
    let left: Vec<_> = std::fs::read_dir(&store)
        .expect("storage dir")
        .flatten()
        .collect();
    assert!(
        left.is_empty(),
        "tern bench left files in its storage dir: {left:?}"
    );
}

/// `tern bench --evacuate 3 --sizes 8 --evacuate-parallel 1,2`: a table
/// and JSON with one run per parallelism, each with a wall time and the
/// three programs' downtimes.
#[test]
fn bench_evacuate_reports_each_parallelism() {
    if !root_or_skip("bench_evacuate_reports_each_parallelism") {
        return;
    }
    let dir = TestDir::new("bench_evacuate");
    let json = dir.join("evacuate.json");
    let a = args![
        "bench",
        "--evacuate",
        "3",
        "--sizes",
        "8",
        "--evacuate-parallel",
        "1,2",
        "--json",
        &json,
        "--dir",
        dir.join("work"),
    ];
    let out = run_tern(&dir, &a, Stdio::null());
    out.assert_ok("tern bench --evacuate");
    assert!(
        out.stdout.contains("Evacuating 3 programs of 8 MiB"),
        "no table printed:\n{}",
        out.stdout
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("evacuate.json"))
            .expect("JSON");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{v}");
    for (r, parallel) in runs.iter().zip([1, 2]) {
        assert_eq!(r["parallel"].as_u64(), Some(parallel), "{r}");
        assert!(r["wall_ms"].as_f64().is_some_and(|w| w > 0.0), "{r}");
        let d = r["downtimes_ms"].as_array().expect("downtimes");
        assert_eq!(d.len(), 3, "{r}");
        assert!(d.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)), "{r}");
    }
}
