//! The paper's two figures, from `tern bench` rows, as SVG: downtime
//! against process size for each mode, and the downtime split into dump,
//! transfer and restore.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

pub struct Point {
    pub size_mib: u64,
    pub series: String,
    pub downtime_ms: f64,
    pub dump_ms: f64,
    pub transfer_ms: f64,
    pub restore_ms: f64,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(200, 60, 40),
    RGBColor(40, 110, 200),
    RGBColor(40, 160, 80),
    RGBColor(150, 80, 180),
    RGBColor(220, 150, 30),
    RGBColor(90, 90, 90),
];

fn series_names(points: &[Point]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in points {
        if !names.contains(&p.series) {
            names.push(p.series.clone());
        }
    }
    names
}

/// Downtime (log scale) against size, one line per mode/policy.
pub fn downtime_chart(points: &[Point], out: &Path) -> Result<()> {
    let max_size = points.iter().map(|p| p.size_mib).max().unwrap_or(1) as f64;
    let min_size = points.iter().map(|p| p.size_mib).min().unwrap_or(1) as f64;
    let max_ms = points.iter().map(|p| p.downtime_ms).fold(1.0, f64::max);
    let min_ms = points
        .iter()
        .map(|p| p.downtime_ms)
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let root = SVGBackend::new(out, (760, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Downtime vs process size", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (min_size * 0.8..max_size * 1.25).log_scale(),
            (min_ms * 0.5..max_ms * 2.0).log_scale(),
        )
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("process size (MiB)")
        .y_desc("downtime (ms, log)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, name) in series_names(points).iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| &p.series == name)
            .map(|p| (p.size_mib as f64, p.downtime_ms))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Stacked bars: dump, transfer, restore of each (size, mode) run.
pub fn breakdown_chart(points: &[Point], out: &Path) -> Result<()> {
    let n = points.len().max(1);
    let max_ms = points
        .iter()
        .map(|p| p.dump_ms + p.transfer_ms + p.restore_ms)
        .fold(1.0, f64::max);
    let root = SVGBackend::new(out, (120 + 70 * n as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Where the downtime goes", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n as f64, 0f64..max_ms * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = points
        .iter()
        .map(|p| {
            format!(
                "{} MiB {}",
                p.size_mib,
                p.series.split(',').next().unwrap_or("")
            )
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            labels.get(i).cloned().unwrap_or_default()
        })
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let parts: [(&str, RGBColor); 3] = [
        ("final dump", COLORS[0]),
        ("transfer", COLORS[1]),
        ("restore + commit", COLORS[2]),
    ];
    for (k, (name, color)) in parts.iter().enumerate() {
        let color = *color;
        chart
            .draw_series(points.iter().enumerate().map(|(i, p)| {
                let vals = [p.dump_ms, p.transfer_ms, p.restore_ms];
                let base: f64 = vals[..k].iter().sum();
                Rectangle::new(
                    [(i as f64 + 0.15, base), (i as f64 + 0.85, base + vals[k])],
                    color.filled(),
                )
            }))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
