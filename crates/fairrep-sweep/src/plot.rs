//! The front plot (SVG): validation accuracy against validation DP gap (left) and KS (right),
//! each configuration's mean with its 95% intervals over seeds as error bars, the Pareto front
//! as a line, the configurations chosen by the rules ringed.
use std::fmt::Write as _;

use fairrep_train::plot::escape;

use crate::front::{Analysis, ConfigPoint, Stat, Unfairness};

const W: f64 = 460.0;
const H: f64 = 320.0;
const ML: f64 = 62.0;
const MR: f64 = 16.0;
const MT: f64 = 30.0;
const MB: f64 = 44.0;

fn range(stats: impl Iterator<Item = Stat>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in stats.filter(|s| s.mean.is_finite()) {
        lo = lo.min(s.mean - s.ci95);
        hi = hi.max(s.mean + s.ci95);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad, hi + pad)
}

fn panel(svg: &mut String, a: &Analysis, which: Unfairness, x0: f64) {
    let x_of = |p: &ConfigPoint| match which {
        Unfairness::DpGap => p.valid_dp_gap,
        Unfairness::Ks => p.valid_ks,
    };
    let front = match which {
        Unfairness::DpGap => &a.front_dp,
        Unfairness::Ks => &a.front_ks,
    };
    let (xl, xh) = range(a.points.iter().map(x_of));
    let (yl, yh) = range(a.points.iter().map(|p| p.valid_accuracy));
    let px = |x: f64| x0 + ML + (x - xl) / (xh - xl) * (W - ML - MR);
    let py = |y: f64| MT + (1.0 - (y - yl) / (yh - yl)) * (H - MT - MB);
    let title = match which {
        Unfairness::DpGap => format!("{}: validation accuracy vs DP gap", a.task),
        Unfairness::Ks => format!("{}: validation accuracy vs KS", a.task),
    };
    let x_label = match which {
        Unfairness::DpGap => "validation DP gap (mean, 95% CI over seeds)",
        Unfairness::Ks => "validation KS (mean, 95% CI over seeds)",
    };
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{MT}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
        x0 + ML,
        W - ML - MR,
        H - MT - MB
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="18" font-size="13" text-anchor="middle">{}</text>"##,
        x0 + W / 2.0,
        escape(&title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
        x0 + ML + (W - ML - MR) / 2.0,
        H - 8.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">validation accuracy</text>"##,
        x0 + 14.0,
        MT + (H - MT - MB) / 2.0,
        x0 + 14.0,
        MT + (H - MT - MB) / 2.0
    );
    for (v, lo, hi, horizontal) in [(xl, xl, xh, true), (yl, yl, yh, false)] {
        let _ = v;
        for k in 0..=4 {
            let t = lo + (hi - lo) * f64::from(k) / 4.0;
            if horizontal {
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{t:.3}</text>"##,
                    px(t),
                    H - MB + 14.0
                );
            } else {
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{t:.3}</text>"##,
                    x0 + ML - 4.0,
                    py(t) + 3.0
                );
            }
        }
    }
    // The front.
    let path: Vec<String> = front
        .iter()
        .map(|&i| {
            let p = &a.points[i];
            format!("{:.1},{:.1}", px(x_of(p).mean), py(p.valid_accuracy.mean))
        })
        .collect();
    if path.len() > 1 {
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#d62728" stroke-width="1.5"/>"##,
            path.join(" ")
        );
    }
    for (i, p) in a.points.iter().enumerate() {
        let (x, y) = (x_of(p), p.valid_accuracy);
        let on_front = front.contains(&i);
        let color = if on_front { "#d62728" } else { "#1f77b4" };
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="0.8"/>"##,
            px(x.mean - x.ci95),
            py(y.mean),
            px(x.mean + x.ci95),
            py(y.mean)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="0.8"/>"##,
            px(x.mean),
            py(y.mean - y.ci95),
            px(x.mean),
            py(y.mean + y.ci95)
        );
        let label: Vec<String> = p.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}</title></circle>"##,
            px(x.mean),
            py(y.mean),
            escape(&label.join(", "))
        );
        if a.choices.iter().any(|c| c.chosen == Some(i)) {
            let _ = writeln!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="7" fill="none" stroke="#2ca02c" stroke-width="2"/>"##,
                px(x.mean),
                py(y.mean)
            );
        }
    }
}

/// The two-panel SVG of an analysis.
pub fn front_svg(a: &Analysis) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" font-family="sans-serif">"##,
        2.0 * W,
        H + 24.0
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
    panel(&mut svg, a, Unfairness::DpGap, 0.0);
    panel(&mut svg, a, Unfairness::Ks, W);
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{:.1}" font-size="11">blue: configurations; red: validation Pareto front; green ring: chosen by a rule (on validation only)</text>"##,
        H + 16.0
    );
    svg.push_str("</svg>\n");
    svg
}
