//! SVG charts of a bench report (plotters, SVG backend only).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::data::{Op, StoreKind};
use super::migration::MigrationRow;
use super::report::{LatencySection, MigrationSection};

type ChartResult<T> = Result<T, Box<dyn std::error::Error>>;

fn range_of(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    ((lo * 0.8).max(0.1), (hi * 1.25).max(lo * 2.0))
}

/// One chart per operation: p50 against positions per user, one line per
/// store, one panel per concurrency. Returns the files written.
pub fn latency(dir: &Path, l: &LatencySection) -> ChartResult<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut concurrencies: Vec<usize> = l.rows.iter().map(|r| r.concurrency).collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    let (pmin, pmax) = range_of(l.rows.iter().map(|r| r.positions as f64));
    for op in Op::ALL {
        let rows: Vec<_> = l.rows.iter().filter(|r| r.op == op).collect();
        if rows.is_empty() {
            continue;
        }
        let path = dir.join(format!("latency_{}.svg", op.name()));
        let (ymin, ymax) = range_of(rows.iter().map(|r| r.p50_us));
        let root =
            SVGBackend::new(&path, (400 * concurrencies.len() as u32, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("{}: p50 latency (µs) by positions per user", op.name()),
            ("sans-serif", 20),
        )?;
        for (panel, c) in root
            .split_evenly((1, concurrencies.len()))
            .iter()
            .zip(&concurrencies)
        {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("concurrency {c}"), ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d((pmin..pmax).log_scale(), (ymin..ymax).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("positions per user")
                .y_desc("p50 µs")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            for (i, store) in StoreKind::ALL.into_iter().enumerate() {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.store == store && r.concurrency == *c)
                    .map(|r| (r.positions as f64, r.p50_us))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(store.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        written.push(path.clone());
    }
    Ok(written)
}

/// Positions per second against users: migrate and verify, and their floors.
pub fn migration(dir: &Path, m: &MigrationSection) -> ChartResult<PathBuf> {
    let path = dir.join("migration.svg");
    let (xmin, xmax) = range_of(m.rows.iter().map(|r| r.users as f64));
    let (ymin, ymax) = range_of(m.rows.iter().flat_map(|r| {
        [
            r.migrate_positions_per_s,
            r.floor_positions_per_s,
            r.verify_positions_per_s,
            r.read_floor_positions_per_s,
        ]
    }));
    let root = SVGBackend::new(&path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Phase 2 throughput: migrate and verify vs their floors",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("users")
        .y_desc("positions / s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    type Figure = fn(&MigrationRow) -> f64;
    let series: [(&str, Figure); 4] = [
        ("keyshift migrate", |r| r.migrate_positions_per_s),
        ("write floor (pipelined bulk load)", |r| {
            r.floor_positions_per_s
        }),
        ("keyshift verify", |r| r.verify_positions_per_s),
        ("read floor (pipelined bulk read)", |r| {
            r.read_floor_positions_per_s
        }),
    ];
    for (i, (name, value)) in series.into_iter().enumerate() {
        let points: Vec<(f64, f64)> = m.rows.iter().map(|r| (r.users as f64, value(r))).collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(path.clone())
}
