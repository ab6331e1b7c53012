//! A small self-contained SVG line-chart writer for the training curves (`curves.svg`) and the
//! audits' trade-off plots.
use std::fmt::Write as _;

use crate::records::EpochRecord;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// `(x, y)` points; non-finite `y` values break the line.
    pub points: Vec<(f64, f64)>,
}

/// One chart (panel).
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title above the panel.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 62.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 30.0;
const MARGIN_B: f64 = 44.0;

/// `text` escaped for SVG text and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// About five "nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    // Multiples of `step`, rounded to its decimals (3 * 0.2 is 0.6000000000000001).
    let decimals = (-step.log10().floor()).max(0.0) as usize + 1;
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|k| {
            let t = k as f64 * step;
            format!("{t:.decimals$}").parse::<f64>().unwrap_or(t)
        })
        .map(|t| if t == 0.0 { 0.0 } else { t })
        .collect()
}

fn format_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn render_panel(out: &mut String, chart: &Chart, ox: f64, oy: f64) {
    let points = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5 * y0.abs().max(1e-3);
        y1 += 0.5 * y1.abs().max(1e-3);
    }
    let pad = 0.05 * (y1 - y0);
    y0 = if y0 >= 0.0 {
        (y0 - pad).max(0.0)
    } else {
        y0 - pad
    };
    y1 += pad;
    let (pl, pt) = (ox + MARGIN_L, oy + MARGIN_T);
    let (pw, ph) = (PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B);
    let sx = |x: f64| pl + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| pt + ph - (y - y0) / (y1 - y0) * ph;

    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        pl + pw / 2.0,
        oy + 18.0,
        escape(&chart.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{pl:.1}" y="{pt:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#444"/>"##
    );
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(
            out,
            r##"<line x1="{pl:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            pl + pw,
            pl - 5.0,
            y + 4.0,
            format_tick(t)
        );
    }
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            pt + ph,
            pt + ph + 4.0,
            pt + ph + 17.0,
            format_tick(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        pl + pw / 2.0,
        oy + PANEL_H - 8.0,
        escape(&chart.x_label)
    );
    for (i, series) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // Split at non-finite values.
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &series.points {
            if x.is_finite() && y.is_finite() {
                segments.last_mut().expect("non-empty").push((sx(x), sy(y)));
            } else if !segments.last().expect("non-empty").is_empty() {
                segments.push(Vec::new());
            }
        }
        for segment in segments.iter().filter(|s| !s.is_empty()) {
            let coords: Vec<String> = segment
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                coords.join(" ")
            );
            if segment.len() == 1 {
                let (x, y) = segment[0];
                let _ = writeln!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                );
            }
        }
        let ly = pt + 14.0 + 16.0 * i as f64;
        let lx = pl + pw - 150.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}" font-size="11">{}</text>"#,
            ly - 4.0,
            lx + 18.0,
            ly - 4.0,
            lx + 23.0,
            escape(&series.label)
        );
    }
}

/// Renders the charts side by side as one SVG document.
pub fn render(charts: &[Chart]) -> String {
    let width = PANEL_W * charts.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{PANEL_H:.0}" viewBox="0 0 {width:.0} {PANEL_H:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, chart) in charts.iter().enumerate() {
        render_panel(&mut out, chart, PANEL_W * i as f64, 0.0);
    }
    out.push_str("</svg>\n");
    out
}

/// Training curves: losses, validation DP gaps, validation penalty.
pub fn training_curves(history: &[EpochRecord]) -> String {
    let x = |r: &EpochRecord| r.epoch as f64;
    let mut charts = vec![Chart {
        title: "loss".into(),
        x_label: "epoch".into(),
        series: vec![
            Series {
                label: "train (total)".into(),
                points: history.iter().map(|r| (x(r), r.train.loss)).collect(),
            },
            Series {
                label: "train (tasks)".into(),
                points: history.iter().map(|r| (x(r), r.train.task_loss)).collect(),
            },
            Series {
                label: "valid (tasks)".into(),
                points: history.iter().map(|r| (x(r), r.valid.task_loss)).collect(),
            },
        ],
    }];
    let tasks: Vec<&String> = history
        .first()
        .map(|r| r.valid.tasks.keys().collect())
        .unwrap_or_default();
    let dp: Vec<Series> = tasks
        .iter()
        .filter(|t| history[0].valid.tasks[**t].dp_gap.is_some())
        .take(8)
        .map(|t| Series {
            label: (*t).clone(),
            points: history
                .iter()
                .map(|r| (x(r), r.valid.tasks[*t].dp_gap.unwrap_or(f64::NAN)))
                .collect(),
        })
        .collect();
    if !dp.is_empty() {
        charts.push(Chart {
            title: "valid DP gap".into(),
            x_label: "epoch".into(),
            series: dp,
        });
    }
    if history.iter().any(|r| r.valid.penalty.is_some()) {
        charts.push(Chart {
            title: "valid penalty".into(),
            x_label: "epoch".into(),
            series: vec![Series {
                label: "penalty".into(),
                points: history
                    .iter()
                    .map(|r| (x(r), r.valid.penalty.as_ref().map_or(f64::NAN, |p| p.value)))
                    .collect(),
            }],
        });
    }
    render(&charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let t = ticks(0.33, 0.71);
        assert!(t.first().unwrap() >= &0.33 && t.last().unwrap() <= &0.71);
        assert!(t.len() >= 3 && t.len() <= 8, "{t:?}");
    }

    #[test]
    fn renders_well_formed_svg() {
        let chart = Chart {
            title: "loss <train>".into(),
            x_label: "epoch".into(),
            series: vec![
                Series {
                    label: "train".into(),
                    points: vec![(1.0, 0.7), (2.0, 0.5), (3.0, f64::NAN), (4.0, 0.4)],
                },
                Series {
                    label: "valid".into(),
                    points: vec![(1.0, 0.8)],
                },
            ],
        };
        let svg = render(&[chart.clone(), chart]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("loss &lt;train&gt;"));
        // Two panels x (two segments + one single-point series).
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches("<circle").count(), 4);
    }
}
