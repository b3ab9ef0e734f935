//! The frontier as an SVG scatter plot: cost relative to target-only on x, score on y, every
//! setting a labelled point, the frontier a line, the floor a dashed line.

use std::fmt::Write;

use super::{frontier, SettingResult};
use crate::svg::{esc, Chart, L, R, W};

/// The plot, with the floor (a fraction of target-only's score) drawn if given.
pub fn plot(results: &[SettingResult], floor: Option<f64>, title: &str) -> String {
    let pts: Vec<&SettingResult> = results.iter().filter(|r| r.cost.is_finite()).collect();
    let chart = Chart {
        title: title.into(),
        x_label: "cost per output token relative to target-only".into(),
        y_label: "score (fraction passed)".into(),
        x_max: pts.iter().map(|r| r.cost).fold(1.0f64, f64::max) * 1.1,
        y_max: 1.0,
        x_decimals: 2,
        y_decimals: 1,
    };
    let x = |c: f64| chart.x(c);
    let y = |s: f64| chart.y(s);
    let mut o = chart.begin();
    if let (Some(f), Some(t)) = (floor, results.iter().find(|r| r.setting == "target")) {
        let fy = y(f * t.score);
        let _ = writeln!(
            o,
            r##"<line x1="{L}" x2="{}" y1="{fy}" y2="{fy}" stroke="#c33" stroke-dasharray="5,4"/><text x="{}" y="{}" fill="#c33" text-anchor="end">floor {f} × target</text>"##,
            W - R,
            W - R,
            fy - 4.0
        );
    }
    let front = frontier(results);
    let path: Vec<String> = front
        .iter()
        .map(|&i| format!("{:.1},{:.1}", x(results[i].cost), y(results[i].score)))
        .collect();
    if path.len() > 1 {
        let _ = writeln!(
            o,
            r##"<polyline points="{}" fill="none" stroke="#36c" stroke-width="2"/>"##,
            path.join(" ")
        );
    }
    for (i, r) in results.iter().enumerate() {
        if !r.cost.is_finite() {
            continue;
        }
        let color = match r.setting.as_str() {
            "target" => "#000",
            "draft" => "#888",
            "exact" => "#093",
            _ if front.contains(&i) => "#36c",
            _ => "#9bd",
        };
        let _ = writeln!(
            o,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x(r.cost),
            y(r.score),
            x(r.cost) + 6.0,
            y(r.score) - 6.0,
            esc(&r.setting)
        );
    }
    Chart::end(&mut o);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_point_and_the_frontier() {
        let mk = |name: &str, cost, score| SettingResult {
            setting: name.into(),
            cost,
            score,
            ..Default::default()
        };
        let rs = vec![
            mk("target", 1.0, 0.8),
            mk("draft", 0.4, 0.5),
            mk("token α=0.5", 0.7, 0.75),
        ];
        let svg = plot(&rs, Some(0.9), "t <1>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("token α=0.5"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("floor 0.9"));
    }
}
