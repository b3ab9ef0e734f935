//! The frontier as an SVG scatter plot: cost relative to target-only on x, score on y, every
//! setting a labelled point, the frontier a line, the floor a dashed line.

use std::fmt::Write;

use super::{frontier, SettingResult};

const W: f64 = 720.0;
const H: f64 = 480.0;
const L: f64 = 70.0;
const R: f64 = 30.0;
const T: f64 = 40.0;
const B: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The plot, with the floor (a fraction of target-only's score) drawn if given.
pub fn plot(results: &[SettingResult], floor: Option<f64>, title: &str) -> String {
    let pts: Vec<&SettingResult> = results.iter().filter(|r| r.cost.is_finite()).collect();
    let xmax = pts.iter().map(|r| r.cost).fold(1.0f64, f64::max) * 1.1;
    let x = |c: f64| L + (W - L - R) * c / xmax;
    let y = |s: f64| H - B - (H - T - B) * s;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        o,
        r#"<path d="M{L},{T} V{} H{}" stroke="black" fill="none"/>"#,
        H - B,
        W - R
    );
    for i in 0..=5 {
        let s = i as f64 / 5.0;
        let _ = writeln!(
            o,
            r##"<line x1="{L}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{s:.1}</text>"##,
            W - R,
            L - 6.0,
            y(s) + 4.0,
            y = y(s)
        );
        let c = xmax * i as f64 / 5.0;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">{c:.2}</text>"#,
            x(c),
            H - B + 16.0
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">cost per output token relative to target-only</text>"#,
        (L + W - R) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">score (fraction passed)</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
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
    o.push_str("</svg>\n");
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
