//! SVG plots: latency percentile curves per target (one panel per open-loop
//! rate), throughput bars and proxy CPU per request, one panel per workload.
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Run;

fn color(target: &str) -> RGBColor {
    match target {
        "direct" => RGBColor(120, 120, 120),
        "outrider" => RGBColor(214, 39, 40),
        "outrider-log" => RGBColor(255, 127, 14),
        "haproxy" => RGBColor(31, 119, 180),
        _ => RGBColor(44, 160, 44),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

pub fn write(dir: &Path, run: &Run) -> Result<()> {
    latency(&dir.join("latency.svg"), run)?;
    let panels = [("HTTP/1.1", "http1"), ("h2c", "h2c"), ("gRPC", "grpc"), ("TCP", "tcp")];
    bars(&dir.join("throughput.svg"), run, &panels, "throughput", |w| {
        w.mb_per_s.map(|m| (m, "MB/s")).or(Some((w.rps, "req/s")))
    })?;
    bars(&dir.join("cpu.svg"), run, &panels, "proxy CPU (lower is better)", |w| {
        w.cpu_us_per_request.map(|c| (c, "µs/request")).or(w.cpu_us_per_mb.map(|c| (c, "µs/MB")))
    })?;
    Ok(())
}

/// x: "nines" of the percentile (1 = 90 %, 2 = 99 %, 3 = 99.9 %); y: µs, log scale.
fn latency(path: &Path, run: &Run) -> Result<()> {
    let rates = &run.settings.rates;
    let root = SVGBackend::new(path, (560 * rates.len().max(1) as u32, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, rates.len().max(1)));
    for (area, rate) in areas.iter().zip(rates) {
        let name = format!("http1-open-{rate}");
        let series: Vec<(String, Vec<(f64, f64)>)> = run
            .targets
            .iter()
            .filter_map(|t| {
                let l = t.workload(&name)?.latency.as_ref()?;
                let pts = l
                    .curve
                    .iter()
                    .filter(|(p, _)| *p < 100.0)
                    .map(|&(p, us)| (-(1.0 - p / 100.0).log10(), us.max(1.0)))
                    .collect();
                Some((t.target.clone(), pts))
            })
            .collect();
        let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(10.0, f64::max) * 1.5;
        let ymin = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(ymax, f64::min).max(1.0) / 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("HTTP/1.1 latency at {rate} req/s (open loop)"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..4.0, (ymin..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency µs")
            .x_labels(5)
            .x_label_formatter(&|x| {
                let s = format!("{:.3}", 100.0 - 100.0 * 10f64.powf(-x));
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            })
            .draw()
            .map_err(err)?;
        for (target, pts) in series {
            let c = color(&target);
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(err)?
                .label(target)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

type Pick = fn(&crate::run::Workload) -> Option<(f64, &'static str)>;

fn bars(path: &Path, run: &Run, panels: &[(&str, &str)], title: &str, pick: Pick) -> Result<()> {
    let root = SVGBackend::new(path, (300 * panels.len() as u32, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    for (area, (label, w)) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        panel(area, run, label, w, pick)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn panel(area: &DrawingArea<SVGBackend, Shift>, run: &Run, label: &str, w: &str, pick: Pick) -> Result<()> {
    let vals: Vec<(String, f64, &'static str)> = run
        .targets
        .iter()
        .filter_map(|t| {
            let (v, unit) = pick(t.workload(w)?)?;
            Some((t.target.clone(), v, unit))
        })
        .collect();
    let unit = vals.first().map(|v| v.2).unwrap_or("");
    let n = vals.len().max(1);
    let ymax = vals.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let names: Vec<String> = vals.iter().map(|v| v.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(label, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d((0..n).into_segmented(), 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, (t, v, _))| {
            let mut r =
                Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)], color(t).filled());
            r.set_margin(0, 0, 8, 8);
            r
        }))
        .map_err(err)?;
    Ok(())
}
