//! The soak's plot, four panels: RSS and open file descriptors of every process over time;
//! the p99 latency of each leg per minute; the failures of each leg per minute (its legend
//! has each leg's count over the run).
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::{ProcSample, SoakReport};

const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(120, 120, 120),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

pub fn write(path: &Path, r: &SoakReport) -> Result<()> {
    let root = SVGBackend::new(path, (1400, 840)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((2, 2));
    let names: Vec<String> = r.samples.first().map(|s| s.procs.keys().cloned().collect()).unwrap_or_default();
    let per_proc = |f: &dyn Fn(&ProcSample) -> Option<f64>| -> Series {
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
    let per_leg = |label: &dyn Fn(&str) -> String, f: &dyn Fn(&super::report::MinuteStats) -> f64| -> Series {
        r.legs
            .iter()
            .map(|l| {
                let pts = r.minutes.iter().filter(|m| m.leg == l.leg).map(|m| ((m.minute + 1) as f64, f(m))).collect();
                (label(&l.leg), pts)
            })
            .collect()
    };
    let lat = per_leg(&|leg| leg.to_owned(), &|m| m.p99_us / 1000.0);
    let counted = |leg: &str| {
        r.legs.iter().find(|l| l.leg == leg).map_or(leg.to_owned(), |l| format!("{leg}: {} {}s", l.count, l.unit))
    };
    let failed = per_leg(&counted, &|m| m.errors as f64);
    let t_max = r.duration_s.max(1.0);
    lines(&areas[0], ("RSS (MiB) over time", "seconds", "MiB"), t_max, &rss, false)?;
    lines(&areas[1], ("open file descriptors over time", "seconds", "fds"), t_max, &fds, false)?;
    let minutes = (r.minutes.iter().map(|m| m.minute + 1).max().unwrap_or(1) as f64).max(1.0);
    let title = "p99 latency per minute (grpc-stream: a whole stream)";
    lines(&areas[2], (title, "minute", "ms"), minutes, &lat, false)?;
    let title = format!("failed per minute ({} failed in all)", r.errors);
    lines(&areas[3], (&title, "minute", "failed"), minutes, &failed, true)?;
    root.present().map_err(err)?;
    Ok(())
}

fn lines(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    (title, x_desc, y_desc): (&str, &str, &str),
    x_max: f64,
    series: &Series,
    legend_up: bool,
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
        .position(if legend_up { SeriesLabelPosition::UpperLeft } else { SeriesLabelPosition::LowerRight })
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
