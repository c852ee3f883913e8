//! A hand-written SVG percentile plot in the style of HdrHistogram's: latency on a linear y
//! axis against percentile on a log axis of 1/(1-p), so 90%, 99%, 99.9%, ... are evenly spaced.
//! Owns only string building; callers write the file.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// x position (in decades of 1/(1-p)) of percentile `p` (0..100).
fn decades(p: f64) -> f64 {
    let frac = (p / 100.0).min(0.999_999_9);
    (1.0 / (1.0 - frac)).log10()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders one plot with a line per series of (percentile, µs) points.
pub fn percentile_plot(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let max_dec = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|&(p, _)| decades(p)))
        .fold(2.0f64, f64::max)
        .ceil()
        .min(7.0);
    let max_y = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|&(_, v)| v))
        .fold(1.0f64, f64::max);
    let max_y = nice_ceil(max_y);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |d: f64| LEFT + pw * d / max_dec;
    let y = |v: f64| TOP + ph * (1.0 - v / max_y);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        W / 2.0,
        escape(title)
    );
    // Vertical grid: 0%, 90%, 99%, ...
    for d in 0..=max_dec as usize {
        let px = x(d as f64);
        let label = match d {
            0 => "0%".to_string(),
            _ => format!("{}%", 100.0 - 100.0 / 10f64.powi(d as i32)),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            TOP + ph,
            TOP + ph + 16.0
        );
    }
    for k in 0..=5 {
        let v = max_y * k as f64 / 5.0;
        let py = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            trim_num(v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">\
         latency (µs)</text>",
        LEFT + pw / 2.0,
        H - 10.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        for &(p, v) in pts {
            let _ = write!(
                path,
                "{:.1},{:.1} ",
                x(decades(p).min(max_dec)),
                y(v.min(max_y))
            );
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.trim_end()
        );
        let ly = TOP + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LEFT + 12.0,
            ly - 4.0,
            LEFT + 30.0,
            ly,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceil(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_wellformed() {
        let pts = vec![(0.0, 10.0), (90.0, 20.0), (99.0, 40.0), (99.99, 900.0)];
        let svg = percentile_plot("t <x>", &[("a".into(), pts)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("99.99%") && svg.contains("t &lt;x&gt;"));
        assert_eq!(nice_ceil(870.0), 1000.0);
        assert!((decades(99.0) - 2.0).abs() < 1e-9);
    }
}
