//! SVG charts of a report.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

/// A named, coloured line of (x, y) points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

const SYSTEMS: [(&str, RGBColor); 3] = [("spillway", BLUE), ("moka", GREEN), ("foyer-hybrid", RED)];

fn draw_err(path: &Path) -> impl Fn(String) -> spillway::Error + '_ {
    move |message| spillway::Error::Disk {
        dir: path.to_path_buf(),
        op: "draw chart",
        message,
    }
}

/// One line per series over the memory budget (x, in % of the working set).
fn lines(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<(), String> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        * 1.1
        + 1e-9;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("memory budget, % of working set")
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)).point_size(3))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

pub fn write(report: &Report, out: &Path) -> spillway::Result<()> {
    let by = |system: &str, f: &dyn Fn(&super::report::RunReport) -> f64| -> Vec<(f64, f64)> {
        report
            .runs
            .iter()
            .filter(|r| r.system == system)
            .map(|r| (r.memory_fraction * 100.0, f(r)))
            .collect()
    };
    let mut hit = Vec::new();
    for (name, color) in SYSTEMS {
        hit.push((
            format!("{name} (all tiers)"),
            color,
            by(name, &|r| r.hit_ratio),
        ));
    }
    hit.push((
        "spillway memory tier".into(),
        CYAN,
        by("spillway", &|r| r.memory_hit_ratio),
    ));
    hit.push((
        "spillway disk tier".into(),
        MAGENTA,
        by("spillway", &|r| r.disk_hit_ratio),
    ));
    let path = out.join("hit_ratio.svg");
    lines(&path, "Hit ratio per tier", "hit ratio", &hit).map_err(draw_err(&path))?;

    let tput: Vec<_> = SYSTEMS
        .iter()
        .map(|(n, c)| (n.to_string(), *c, by(n, &|r| r.ops_per_sec)))
        .collect();
    let path = out.join("throughput.svg");
    lines(&path, "Throughput", "ops/s", &tput).map_err(draw_err(&path))?;

    let lat = vec![
        (
            "spillway memory hit p99".to_string(),
            CYAN,
            by("spillway", &|r| r.latency_memory.p99_us),
        ),
        (
            "spillway disk hit p99".to_string(),
            BLUE,
            by("spillway", &|r| r.latency_disk.p99_us),
        ),
        (
            "spillway miss p99".to_string(),
            BLACK,
            by("spillway", &|r| r.latency_miss.p99_us),
        ),
        (
            "foyer disk hit p99".to_string(),
            RED,
            by("foyer-hybrid", &|r| r.latency_disk.p99_us),
        ),
        (
            "spillway disk hit p50".to_string(),
            MAGENTA,
            by("spillway", &|r| r.latency_disk.p50_us),
        ),
    ];
    let path = out.join("latency.svg");
    lines(&path, "Latency per tier (µs)", "µs", &lat).map_err(draw_err(&path))?;

    // Spill bandwidth over time, one line per memory budget (x: seconds).
    let path = out.join("spill_bandwidth.svg");
    let series: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.system == "spillway")
        .filter_map(|r| {
            let s = r.spill.as_ref()?;
            let color = Palette99::pick((r.memory_fraction * 100.0) as usize).to_rgba();
            Some((
                format!("{:.0}% memory", r.memory_fraction * 100.0),
                RGBColor(color.0, color.1, color.2),
                s.series.clone(),
            ))
        })
        .collect();
    lines(
        &path,
        "Spill bandwidth over the steady phase (MiB/s; x = seconds)",
        "MiB/s",
        &series,
    )
    .map_err(draw_err(&path))
}
