//! The soak's plot: RSS and open file descriptors of every process over time, and the p99
//! latency of each protocol per minute (failed requests marked), three panels side by side.
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::soak::SoakReport;

const COLORS: [RGBColor; 4] =
    [RGBColor(214, 39, 40), RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(120, 120, 120)];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

pub fn write(path: &Path, r: &SoakReport) -> Result<()> {
    let root = SVGBackend::new(path, (1500, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, 3));
    let names: Vec<String> = r.samples.first().map(|s| s.procs.keys().cloned().collect()).unwrap_or_default();
    let per_proc = |f: &dyn Fn(&crate::soak::ProcSample) -> Option<f64>| -> Series {
        names
            .iter()
            .map(|n| {
                let pts = r.samples.iter().filter_map(|s| Some((s.t_s, f(s.procs.get(n)?)?))).collect();
                (n.clone(), pts)
            })
            .collect()
    };
    let rss = per_proc(&|p| p.rss_kb.map(|k| k as f64 / 1024.0));
    let fds = per_proc(&|p| p.fds.map(|f| f as f64));
    let lat: Series = ["http1", "h2", "grpc"]
        .iter()
        .map(|proto| {
            let pts = r
                .minutes
                .iter()
                .filter(|m| m.protocol == *proto)
                .map(|m| ((m.minute + 1) as f64, m.p99_us / 1000.0))
                .collect();
            ((*proto).to_string(), pts)
        })
        .collect();
    let t_max = r.duration_s.max(1.0);
    lines(&areas[0], "RSS (MiB) over time", "seconds", "MiB", t_max, &rss)?;
    lines(&areas[1], "open file descriptors over time", "seconds", "fds", t_max, &fds)?;
    let minutes = r.minutes.iter().map(|m| m.minute + 1).max().unwrap_or(1) as f64;
    let title = format!("p99 latency per minute ({} failed of {})", r.errors, r.requests);
    lines(&areas[2], &title, "minute", "ms", minutes.max(1.0), &lat)?;
    root.present().map_err(err)?;
    Ok(())
}

fn lines(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_max: f64,
    series: &Series,
) -> Result<()> {
    let y_max = series.iter().flat_map(|(_, p)| p.iter().map(|v| v.1)).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
