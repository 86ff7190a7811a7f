//! SVG charts of a report.
//!
//! Every line has its own colour, marker shape and dash pattern, so that
//! lines that coincide (spillway's and foyer's hit ratios often do) still
//! show. A missing figure (moka has no disk tier; a run without disk hits
//! has no disk-hit latency) is left out, never drawn as zero: a line breaks
//! around it, and a series with no figure at all is not drawn.

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{si, Report, RunReport};

/// Dark colours that read well on white: Okabe-Ito's blue, vermillion and
/// green (darkened), then purple, near-black, wine, brown and teal.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 128, 90),
    RGBColor(106, 61, 154),
    RGBColor(40, 40, 40),
    RGBColor(170, 51, 119),
    RGBColor(140, 81, 10),
    RGBColor(0, 110, 130),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dash {
    Solid,
    Dashed,
    Dotted,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    TriangleDown,
    Plus,
}

/// How one line looks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Style {
    color: RGBColor,
    shape: Shape,
    filled: bool,
    dash: Dash,
}

const fn style(color: usize, shape: Shape, filled: bool, dash: Dash) -> Style {
    Style {
        color: PALETTE[color],
        shape,
        filled,
        dash,
    }
}

/// Distinct styles for series that are not a fixed system (one per memory
/// budget in the spill-bandwidth chart).
const STYLES: [Style; 8] = [
    style(0, Shape::Circle, true, Dash::Solid),
    style(1, Shape::Square, true, Dash::Dashed),
    style(2, Shape::Triangle, true, Dash::Dotted),
    style(3, Shape::Diamond, true, Dash::Solid),
    style(4, Shape::TriangleDown, false, Dash::Dashed),
    style(5, Shape::Plus, true, Dash::Dotted),
    style(6, Shape::Circle, false, Dash::Solid),
    style(7, Shape::Square, false, Dash::Dashed),
];

/// The systems of the run, each with a style of its own in every chart.
const SYSTEMS: [(&str, Style); 4] = [
    ("spillway", style(0, Shape::Circle, true, Dash::Solid)),
    (
        "spillway-no-wb",
        style(5, Shape::Circle, false, Dash::Dashed),
    ),
    ("moka", style(2, Shape::Triangle, true, Dash::Dashed)),
    ("foyer-hybrid", style(1, Shape::Square, true, Dash::Dotted)),
];

/// A named line; `None` is a missing figure.
struct Series {
    name: String,
    style: Style,
    points: Vec<(f64, Option<f64>)>,
}

/// One chart: its axes, and whether the y axis is logarithmic.
struct Chart<'a> {
    title: &'a str,
    x_desc: &'a str,
    x_label: fn(&f64) -> String,
    y_desc: &'a str,
    log_y: bool,
}

fn percent(v: &f64) -> String {
    format!("{}%", si(*v))
}

fn number(v: &f64) -> String {
    si(*v)
}

fn draw_err(path: &Path) -> impl Fn(String) -> spillway::Error + '_ {
    move |message| spillway::Error::Disk {
        dir: path.to_path_buf(),
        op: "draw chart",
        message,
    }
}

/// The marker's outline, relative to its centre, in pixels.
fn outline(shape: Shape) -> Vec<(i32, i32)> {
    match shape {
        Shape::Circle => (0..16)
            .map(|i| {
                let a = f64::from(i) * std::f64::consts::PI / 8.0;
                (
                    (5.0 * a.cos()).round() as i32,
                    (5.0 * a.sin()).round() as i32,
                )
            })
            .collect(),
        Shape::Square => vec![(-4, -4), (4, -4), (4, 4), (-4, 4)],
        Shape::Triangle => vec![(0, -5), (5, 4), (-5, 4)],
        Shape::TriangleDown => vec![(0, 5), (5, -4), (-5, -4)],
        Shape::Diamond => vec![(0, -5), (5, 0), (0, 5), (-5, 0)],
        Shape::Plus => vec![
            (-1, -5),
            (1, -5),
            (1, -1),
            (5, -1),
            (5, 1),
            (1, 1),
            (1, 5),
            (-1, 5),
            (-1, 1),
            (-5, 1),
            (-5, -1),
            (-1, -1),
        ],
    }
}

/// A marker's filled shape and its outline, in pixels from its anchor.
type MarkerParts = (Polygon<(i32, i32)>, PathElement<(i32, i32)>);

/// A marker's shape (filled translucent, or open) and its outline,
/// centred `dx` pixels right of its anchor.
fn marker_parts(style: Style, dx: i32) -> MarkerParts {
    let points: Vec<(i32, i32)> = outline(style.shape)
        .into_iter()
        .map(|(x, y)| (x + dx, y))
        .collect();
    let mut closed = points.clone();
    closed.push(points[0]);
    // Translucent or open: a marker under another one still shows.
    let fill = style.color.mix(if style.filled { 0.45 } else { 0.0 });
    (
        Polygon::new(points, fill.filled()),
        PathElement::new(closed, style.color.stroke_width(2)),
    )
}

/// The legend's sample of a dash pattern: four pieces of line over 32
/// pixels (the marker goes over the middle).
fn legend_dashes(style: Style) -> [PathElement<(i32, i32)>; 4] {
    let pieces = match style.dash {
        Dash::Solid => [(0, 11), (11, 16), (16, 21), (21, 32)],
        Dash::Dashed => [(0, 8), (12, 20), (24, 32), (24, 32)],
        Dash::Dotted => [(0, 2), (5, 7), (25, 27), (30, 32)],
    };
    pieces.map(|(a, b)| PathElement::new(vec![(a, 0), (b, 0)], style.color.stroke_width(2)))
}

/// The runs of points without a missing figure between them.
fn segments(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in points {
        match y {
            Some(y) if y.is_finite() => out.last_mut().into_iter().for_each(|s| s.push((x, y))),
            _ => out.push(Vec::new()),
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The plot's width in pixels, and the legend's to its right.
const WIDTH: u32 = 720;
const LEGEND_WIDTH: u32 = 230;

/// One line per series: a sample of its line and marker, and its name.
fn legend(area: &DrawingArea<SVGBackend, Shift>, series: &[Series]) -> Result<(), String> {
    let font =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, s) in series.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        let [a, b, c, d] = legend_dashes(s.style);
        let (shape, edge) = marker_parts(s.style, 16);
        area.draw(&(EmptyElement::at((4, y)) + a + b + c + d + shape + edge))
            .map_err(|e| e.to_string())?;
        area.draw(&Text::new(s.name.clone(), (44, y), font.clone()))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Draws `chart` with `series` into an SVG file at `path`.
fn draw(path: &Path, chart: &Chart, series: &[Series]) -> Result<(), String> {
    // Missing figures, and on a log axis figures that are not positive, are left out.
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            style: s.style,
            points: s
                .points
                .iter()
                .map(|&(x, y)| (x, y.filter(|v| v.is_finite() && (!chart.log_y || *v > 0.0))))
                .collect(),
        })
        .filter(|s| s.points.iter().any(|p| p.1.is_some()))
        .collect();
    let present = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter_map(|&(x, y)| Some((x, y?)))
    };
    let x_max = present().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = present().map(|p| p.1).fold(0.0, f64::max);
    let y_min = present().map(|p| p.1).fold(f64::INFINITY, f64::min);

    let root = SVGBackend::new(path, (WIDTH + LEGEND_WIDTH, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // The legend has a column of its own: it never covers a line.
    let (plot, side) = root.split_horizontally(WIDTH);
    legend(&side, &series)?;
    let mut builder = ChartBuilder::on(&plot);
    builder
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64);
    let x_range = 0.0..x_max * 1.05;
    if chart.log_y {
        let (lo, hi) = if y_min.is_finite() && y_max > 0.0 {
            (y_min / 2.0, y_max * 2.0)
        } else {
            (1.0, 10.0)
        };
        let ctx = builder
            .build_cartesian_2d(x_range, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        finish(ctx, chart, &series)?;
    } else {
        let hi = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
        let ctx = builder
            .build_cartesian_2d(x_range, 0.0..hi)
            .map_err(|e| e.to_string())?;
        finish(ctx, chart, &series)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn finish<'a, Y>(
    mut ctx: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    chart: &Chart,
    series: &[Series],
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    ctx.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .x_label_formatter(&chart.x_label)
        .y_label_formatter(&number)
        .light_line_style(RGBColor(0, 0, 0).mix(0.06))
        .bold_line_style(RGBColor(0, 0, 0).mix(0.15))
        .draw()
        .map_err(|e| e.to_string())?;
    // Solid lines first, patterned ones over them, markers over every line:
    // a line that coincides with another still shows.
    let mut order: Vec<&Series> = series.iter().collect();
    order.sort_by_key(|s| s.style.dash as u8);
    for s in order {
        let st = s.style;
        for seg in segments(&s.points) {
            match st.dash {
                Dash::Solid => ctx.draw_series(LineSeries::new(seg, st.color.stroke_width(3))),
                Dash::Dashed => {
                    ctx.draw_series(DashedLineSeries::new(seg, 9, 5, st.color.stroke_width(2)))
                }
                Dash::Dotted => {
                    ctx.draw_series(DashedLineSeries::new(seg, 2, 4, st.color.stroke_width(2)))
                }
            }
            .map_err(|e| e.to_string())?;
        }
    }
    for s in series {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|&(x, y)| Some((x, y?)))
            .collect();
        ctx.draw_series(points.into_iter().map(|at| {
            let (shape, edge) = marker_parts(s.style, 0);
            EmptyElement::at(at) + shape + edge
        }))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub fn write(report: &Report, out: &Path) -> spillway::Result<()> {
    let by = |system: &str, f: &dyn Fn(&RunReport) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
        report
            .runs
            .iter()
            .filter(|r| r.system == system)
            .map(|r| (r.memory_fraction * 100.0, f(r)))
            .collect()
    };
    let system = |name: &str| {
        SYSTEMS
            .iter()
            .find(|s| s.0 == name)
            .map_or(STYLES[0], |s| s.1)
    };
    let memory_axis = |title, y_desc, log_y| Chart {
        title,
        x_desc: "memory budget, % of the working set",
        x_label: percent,
        y_desc,
        log_y,
    };

    let mut hit = Vec::new();
    for name in ["spillway", "moka", "foyer-hybrid"] {
        hit.push(Series {
            name: format!("{name} (all tiers)"),
            style: system(name),
            points: by(name, &|r| Some(r.hit_ratio)),
        });
    }
    hit.push(Series {
        name: "spillway memory tier".into(),
        style: style(3, Shape::Diamond, true, Dash::Solid),
        points: by("spillway", &|r| Some(r.memory_hit_ratio)),
    });
    hit.push(Series {
        name: "spillway disk tier".into(),
        style: style(6, Shape::TriangleDown, true, Dash::Dashed),
        points: by("spillway", &|r| Some(r.disk_hit_ratio)),
    });
    let path = out.join("hit_ratio.svg");
    draw(
        &path,
        &memory_axis("Hit ratio per tier", "hit ratio", false),
        &hit,
    )
    .map_err(draw_err(&path))?;

    let tput: Vec<Series> = SYSTEMS
        .iter()
        .map(|(name, st)| Series {
            name: name.to_string(),
            style: *st,
            points: by(name, &|r| Some(r.ops_per_sec)),
        })
        .collect();
    let path = out.join("throughput.svg");
    draw(
        &path,
        &memory_axis("Throughput, steady phase", "operations per second", false),
        &tput,
    )
    .map_err(draw_err(&path))?;

    let lat = vec![
        Series {
            name: "spillway memory hit p99".into(),
            style: style(3, Shape::Diamond, true, Dash::Solid),
            points: by("spillway", &|r| r.latency_memory.p99()),
        },
        Series {
            name: "spillway disk hit p99".into(),
            style: system("spillway"),
            points: by("spillway", &|r| r.latency_disk.p99()),
        },
        Series {
            name: "spillway disk hit p50".into(),
            style: style(0, Shape::Circle, false, Dash::Dashed),
            points: by("spillway", &|r| r.latency_disk.p50()),
        },
        Series {
            name: "spillway miss p99".into(),
            style: style(4, Shape::Plus, true, Dash::Solid),
            points: by("spillway", &|r| r.latency_miss.p99()),
        },
        Series {
            name: "foyer disk hit p99".into(),
            style: system("foyer-hybrid"),
            points: by("foyer-hybrid", &|r| r.latency_disk.p99()),
        },
    ];
    let path = out.join("latency.svg");
    draw(
        &path,
        &memory_axis("Latency per tier", "µs (log scale)", true),
        &lat,
    )
    .map_err(draw_err(&path))?;

    // Spill bandwidth over time, one line per memory budget.
    let series: Vec<Series> = report
        .runs
        .iter()
        .filter(|r| r.system == "spillway")
        .filter_map(|r| r.spill.as_ref().map(|s| (r, s)))
        .enumerate()
        .map(|(i, (r, s))| Series {
            name: format!("{:.0}% memory", r.memory_fraction * 100.0),
            style: STYLES[i % STYLES.len()],
            points: s.series.iter().map(|&(t, v)| (t, Some(v))).collect(),
        })
        .collect();
    let path = out.join("spill_bandwidth.svg");
    draw(
        &path,
        &Chart {
            title: "Spill bandwidth over the steady phase",
            x_desc: "seconds into the steady phase",
            x_label: number,
            y_desc: "MiB/s spilled (per 100 ms)",
            log_y: false,
        },
        &series,
    )
    .map_err(draw_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element of an SVG.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("</text>")
            .filter_map(|chunk| chunk.rsplit_once('>').map(|(_, t)| t.trim().to_string()))
            .filter(|t| !t.is_empty())
            .collect()
    }

    #[test]
    fn every_chart_renders_with_readable_axes() {
        let dir = tempfile::tempdir().unwrap();
        // SPILLWAY_CHARTS_DIR keeps the charts, to look at them.
        let out = std::env::var_os("SPILLWAY_CHARTS_DIR")
            .map_or_else(|| dir.path().to_path_buf(), std::path::PathBuf::from);
        std::fs::create_dir_all(&out).unwrap();
        write(&super::super::report::sample(), &out).unwrap();
        let read = |name: &str| {
            let svg = std::fs::read_to_string(out.join(name)).unwrap();
            assert!(svg.len() > 1000, "{name} is nearly empty");
            let texts = texts(&svg);
            for t in &texts {
                // Tick labels: `1.2M`, `650k`, `25%`, never `1000000.0`.
                let numeric = t
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
                assert!(
                    !(numeric && t.ends_with(".0")),
                    "{name}: label {t:?} in {texts:?}"
                );
            }
            texts
        };

        let spill = read("spill_bandwidth.svg");
        assert!(
            spill.iter().any(|t| t == "seconds into the steady phase"),
            "{spill:?}"
        );
        assert!(
            !spill.iter().any(|t| t.contains("memory budget")),
            "{spill:?}"
        );

        let tput = read("throughput.svg");
        assert!(tput.iter().any(|t| t.contains("memory budget")), "{tput:?}");
        assert!(tput.iter().any(|t| t.ends_with('M')), "{tput:?}");
        assert!(tput.iter().any(|t| t.ends_with('k')), "{tput:?}");
        assert!(tput.iter().any(|t| t == "25%" || t == "50%"), "{tput:?}");

        let lat = read("latency.svg");
        assert!(lat.iter().any(|t| t.contains("log scale")), "{lat:?}");
        // Decades on the log axis.
        assert!(lat.iter().any(|t| t == "100"), "{lat:?}");
        assert!(lat.iter().any(|t| t == "1k"), "{lat:?}");

        let hit = read("hit_ratio.svg");
        assert!(hit.iter().any(|t| t == "spillway disk tier"), "{hit:?}");
    }

    #[test]
    fn a_missing_figure_breaks_the_line_instead_of_dropping_to_zero() {
        let points = [
            (5.0, Some(3.0)),
            (10.0, Some(4.0)),
            (25.0, None),
            (50.0, Some(5.0)),
            (100.0, None),
        ];
        assert_eq!(
            segments(&points),
            vec![vec![(5.0, 3.0), (10.0, 4.0)], vec![(50.0, 5.0)]]
        );
        assert!(segments(&[(1.0, None)]).is_empty());
    }

    #[test]
    fn every_line_has_its_own_look() {
        let looks = |styles: &[Style]| {
            for (i, a) in styles.iter().enumerate() {
                for b in &styles[i + 1..] {
                    assert!(
                        (a.shape, a.filled) != (b.shape, b.filled) || a.dash != b.dash,
                        "{a:?} and {b:?}"
                    );
                    assert!(a != b);
                }
            }
        };
        looks(&STYLES);
        looks(&SYSTEMS.map(|s| s.1));
        // Dark enough for a white background: no channel sum above 2/3 of white.
        for c in PALETTE {
            let sum = u32::from(c.0) + u32::from(c.1) + u32::from(c.2);
            assert!(sum < 2 * 255, "{c:?} is too light");
        }
    }
}
