//! Output-token throughput against median latency, one line per run, each point labelled with
//! its concurrency.

use std::fmt::Write;

use crate::svg::{esc, nice_max, tick_decimals, Chart, L, PALETTE, T};

use super::stats::Level;

/// The latency on the x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Median time per output token.
    Tpot,
    /// Median end-to-end latency.
    E2el,
}

impl XAxis {
    fn value(self, l: &Level) -> Option<f64> {
        match self {
            XAxis::Tpot => l.tpot_ms.map(|s| s.median),
            XAxis::E2el => l.e2el_ms.map(|s| s.median),
        }
    }

    fn label(self) -> &'static str {
        match self {
            XAxis::Tpot => "median time per output token (ms)",
            XAxis::E2el => "median end-to-end latency (ms)",
        }
    }
}

/// One run: its name in the legend and its levels.
pub struct Series<'a> {
    pub name: String,
    pub levels: &'a [Level],
}

/// The points of a series: (x, y, concurrency), levels without the latency left out.
fn points(s: &Series, axis: XAxis) -> Vec<(f64, f64, usize)> {
    s.levels
        .iter()
        .filter_map(|l| Some((axis.value(l)?, l.output_throughput, l.concurrency)))
        .filter(|(x, y, _)| x.is_finite() && y.is_finite())
        .collect()
}

pub fn plot(series: &[Series], axis: XAxis, title: &str) -> String {
    let all: Vec<Vec<(f64, f64, usize)>> = series.iter().map(|s| points(s, axis)).collect();
    let max = |f: fn(&(f64, f64, usize)) -> f64| {
        nice_max(all.iter().flatten().map(f).fold(0.0f64, f64::max) * 1.05)
    };
    let (x_max, y_max) = (max(|p| p.0), max(|p| p.1));
    let chart = Chart {
        title: title.into(),
        x_label: axis.label().into(),
        y_label: "output tokens/s".into(),
        x_max,
        y_max,
        x_decimals: tick_decimals(x_max),
        y_decimals: tick_decimals(y_max),
    };
    let mut o = chart.begin();
    for (i, (s, pts)) in series.iter().zip(&all).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        draw_series(&mut o, &chart, pts, color);
        let ly = T + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            L + 12.0,
            ly - 9.0,
            L + 28.0,
            ly,
            esc(&s.name)
        );
    }
    Chart::end(&mut o);
    o
}

fn draw_series(o: &mut String, chart: &Chart, pts: &[(f64, f64, usize)], color: &str) {
    let path: Vec<String> = pts
        .iter()
        .map(|&(x, y, _)| format!("{:.1},{:.1}", chart.x(x), chart.y(y)))
        .collect();
    if path.len() > 1 {
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
    }
    for &(x, y, c) in pts {
        let (px, py) = (chart.x(x), chart.y(y));
        let _ = writeln!(
            o,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{c}</text>"#,
            px + 6.0,
            py - 6.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::stats::{level, Summary};

    fn lvl(c: usize, tpot: f64, tput: f64) -> Level {
        let mut l = level(c, &[], std::time::Duration::from_secs(1));
        l.tpot_ms = Some(Summary {
            mean: tpot,
            median: tpot,
            p99: tpot,
        });
        l.e2el_ms = None;
        l.output_throughput = tput;
        l
    }

    #[test]
    fn one_line_per_run_and_labelled_points() {
        let a = [lvl(1, 30.0, 33.0), lvl(4, 45.0, 90.0), lvl(16, 80.0, 200.0)];
        let b = [lvl(1, 25.0, 40.0)];
        let s = [
            Series {
                name: "ours <exact>".into(),
                levels: &a,
            },
            Series {
                name: "llama-server".into(),
                levels: &b,
            },
        ];
        let svg = plot(&s, XAxis::Tpot, "t");
        assert_eq!(svg.matches("<circle").count(), 4);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains(">16</text>") && svg.contains("ours &lt;exact&gt;"));
        assert!(svg.contains("median time per output token"));
        // No E2EL medians: no points, still a valid document.
        let svg = plot(&s, XAxis::E2el, "t");
        assert_eq!(svg.matches("<circle").count(), 0);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
