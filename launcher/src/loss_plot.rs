//! A loss-curve picture (SVG) from the trainer's `loss.csv`: the loss and
//! the token accuracy per step, each smoothed over 20 steps.

use anyhow::{Context, Result};
use std::fmt::Write;
use std::path::Path;

fn smooth(v: &[f64], w: usize) -> Vec<f64> {
    (0..v.len()).map(|i| { let s = i.saturating_sub(w - 1); v[s..=i].iter().sum::<f64>() / (i + 1 - s) as f64 }).collect()
}

pub fn write_svg(csv: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let (mut loss, mut acc) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<f64> = line.split(',').filter_map(|x| x.parse().ok()).collect();
        if f.len() >= 6 {
            loss.push(f[2]);
            acc.push(f[5]);
        }
    }
    let (w, h, pad) = (720.0, 360.0, 50.0);
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#)?;
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/><text x="{pad}" y="20">training loss (blue, left axis) and token accuracy (orange, right axis, 0..1), 20-step mean</text>"#)?;
    if loss.len() >= 2 {
        let (ls, as_) = (smooth(&loss, 20), smooth(&acc, 20));
        let lmax = ls.iter().cloned().fold(f64::MIN, f64::max).max(1e-9);
        let n = ls.len() as f64 - 1.0;
        let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / n;
        let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
        let path = |v: &[f64], max: f64| v.iter().enumerate().map(|(i, &p)| format!("{:.1},{:.1}", x(i), y(p, max))).collect::<Vec<_>>().join(" ");
        writeln!(s, r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#, path(&ls, lmax))?;
        writeln!(s, r#"<polyline fill="none" stroke="darkorange" stroke-width="1.5" points="{}"/>"#, path(&as_, 1.0))?;
        writeln!(s, r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - pad, w - pad, h - pad)?;
        writeln!(s, r#"<text x="{pad}" y="{}">step 1</text><text x="{}" y="{}" text-anchor="end">step {}</text>"#, h - pad + 16.0, w - pad, h - pad + 16.0, loss.len())?;
        writeln!(s, r#"<text x="5" y="{}">{:.3}</text><text x="5" y="{}">0</text>"#, pad, lmax, h - pad)?;
        writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">final loss {:.4}, accuracy {:.3}</text>"#, w - pad, pad - 10.0, ls[ls.len() - 1], as_[as_.len() - 1])?;
    }
    writeln!(s, "</svg>")?;
    std::fs::write(out, s).with_context(|| format!("writing {}", out.display()))
}
