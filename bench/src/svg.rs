//! Hand-written SVG charts: a frame with linear axes from 0, gridlines, ticks and labels, onto
//! which `calibrate` and `bench serve` draw their points.

use std::fmt::Write;

pub const W: f64 = 720.0;
pub const H: f64 = 480.0;
pub const L: f64 = 70.0;
pub const R: f64 = 30.0;
pub const T: f64 = 40.0;
pub const B: f64 = 60.0;

/// Colours for series, in order.
pub const PALETTE: [&str; 8] = [
    "#36c", "#c33", "#093", "#f90", "#939", "#0aa", "#888", "#000",
];

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart's frame: both axes run from 0 to their maximum, with five tick intervals.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_max: f64,
    pub y_max: f64,
    /// Decimals of the tick labels.
    pub x_decimals: usize,
    pub y_decimals: usize,
}

/// A round axis maximum at or above `v` (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten),
/// so that its five tick intervals are round too.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powi(v.log10().floor() as i32);
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&x| x >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

/// Decimals that print every tick of an axis ending at `max` exactly (up to 4).
pub fn tick_decimals(max: f64) -> usize {
    let step = max / 5.0;
    (0..4)
        .find(|&d| {
            let x = step * 10f64.powi(d as i32);
            (x - x.round()).abs() < 1e-6 * x.max(1.0)
        })
        .unwrap_or(4)
}

impl Chart {
    /// Where a value lies on the x axis, in pixels.
    pub fn x(&self, v: f64) -> f64 {
        L + (W - L - R) * v / self.x_max
    }

    pub fn y(&self, v: f64) -> f64 {
        H - B - (H - T - B) * v / self.y_max
    }

    /// The document's start: background, title, axes, gridlines, ticks and axis labels.
    pub fn begin(&self) -> String {
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
            esc(&self.title)
        );
        let _ = writeln!(
            o,
            r#"<path d="M{L},{T} V{} H{}" stroke="black" fill="none"/>"#,
            H - B,
            W - R
        );
        self.ticks(&mut o);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (L + W - R) / 2.0,
            H - 18.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            o,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
            (T + H - B) / 2.0,
            (T + H - B) / 2.0,
            esc(&self.y_label)
        );
        o
    }

    fn ticks(&self, o: &mut String) {
        for i in 0..=5 {
            let s = self.y_max * i as f64 / 5.0;
            let _ = writeln!(
                o,
                r##"<line x1="{L}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{s:.prec$}</text>"##,
                W - R,
                L - 6.0,
                self.y(s) + 4.0,
                y = self.y(s),
                prec = self.y_decimals
            );
            let c = self.x_max * i as f64 / 5.0;
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{}" text-anchor="middle">{c:.prec$}</text>"#,
                self.x(c),
                H - B + 16.0,
                prec = self.x_decimals
            );
        }
    }

    /// Closes the document.
    pub fn end(o: &mut String) {
        o.push_str("</svg>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_maps_values_and_escapes_labels() {
        let c = Chart {
            title: "a <b>".into(),
            x_label: "x & y".into(),
            y_label: "tokens/s".into(),
            x_max: 200.0,
            y_max: 50.0,
            x_decimals: tick_decimals(200.0),
            y_decimals: tick_decimals(50.0),
        };
        assert_eq!(c.x(0.0), L);
        assert_eq!(c.x(200.0), W - R);
        assert_eq!(c.y(0.0), H - B);
        assert_eq!(c.y(50.0), T);
        let mut s = c.begin();
        Chart::end(&mut s);
        assert!(s.contains("a &lt;b&gt;") && s.contains("x &amp; y"));
        assert!(s.contains(">160<") && s.contains(">40<"));
        assert!(s.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn round_axes() {
        assert_eq!(nice_max(13.2), 15.0);
        assert_eq!(nice_max(264.0), 300.0);
        assert_eq!(nice_max(637.0), 800.0);
        assert_eq!(nice_max(0.042), 0.05);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(tick_decimals(15.0), 0);
        assert_eq!(tick_decimals(1.5), 1);
        assert_eq!(tick_decimals(0.05), 2);
    }
}
