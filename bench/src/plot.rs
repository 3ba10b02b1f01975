//! SVG charts for the benchmark reports: grouped bars (a metric per category
//! and configuration), lines with points (a metric against a swept parameter,
//! with an optional reference such as speedup 1.0), and heat maps (a metric
//! over two swept parameters, every cell labelled with its value).
//!
//! Text needs no font file, at build time or at run time. plotters is built
//! without its `ttf` and `ab_glyph` font backends, so it sizes text with a
//! fixed per-character estimate, and the SVG backend writes titles, axis
//! labels, ticks and legends as `<text>` elements that the viewer renders in
//! its own `sans-serif`. That keeps the crate pure Rust (no fontconfig or
//! freetype, no font to ship or license, nothing to install). The cost is
//! approximate text measurement: label areas are sized by the estimate, but
//! alignment (start, middle, end) is left to the viewer, so text lines up.
//!
//! A chart is drawn into a string and written in one go, so a failed drawing
//! leaves no half-written file. Missing and non-finite values are not drawn
//! (heat-map cells show "-"); input with nothing to draw is a
//! [`BenchError::Plot`], never a panic.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{GREY_200, GREY_700};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{BenchError, Result};

/// Grouped bar chart: one group of bars per entry of `groups` (x axis), one
/// bar per series in each group. `series[s].1[g]` is series `s` in group `g`.
#[derive(Debug, Clone)]
pub struct Bars {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

/// Line chart with points; `reference_y` adds a dashed grey horizontal line
/// (e.g. speedup 1.0).
#[derive(Debug, Clone)]
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub reference_y: Option<f64>,
}

/// Heat map: cell (x, y) coloured by `values[y][x]`, `ys[0]` at the bottom
/// like a numeric axis. Colours run from red (lowest value) through yellow
/// to green (highest); a colour bar on the right, titled `value_label`, says so.
#[derive(Debug, Clone)]
pub struct Heat {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub xs: Vec<String>,
    pub ys: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    pub value_label: String,
}

const SIZE: (u32, u32) = (800, 480);
const FONT: &str = "sans-serif";
// plotters writes font-size as size / 1.24, so these come out at about 19, 13 and 14 px.
const TITLE_SIZE: u32 = 24;
const TICK_SIZE: u32 = 16;
const DESC_SIZE: u32 = 17;
/// Width of the heat map's colour bar, taken from the right of the picture.
const COLOUR_BAR_W: u32 = 120;

/// The common Tableau 10 colours, so neighbouring series are easy to tell apart.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// What drawing code returns: plotters' errors differ by backend, so they are
/// boxed here and turned into one `BenchError::Plot` in [`render`].
type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

pub fn bar_chart(path: &Path, bars: &Bars) -> Result<()> {
    let groups = bars.groups.len();
    if groups == 0 || bars.series.is_empty() {
        return Err(plot_error(path, "a bar chart needs at least one group and one series"));
    }
    // Values past the last group have no place on the x axis.
    let values: Vec<f64> = bars.series.iter().flat_map(|(_, vs)| vs.iter().take(groups)).filter_map(|v| finite(*v)).collect();
    if values.is_empty() {
        return Err(plot_error(path, "every bar value is missing"));
    }
    // Bars grow from 0, so 0 is always in range; all-zero data still gets a unit of height.
    let lo = values.iter().copied().fold(0.0, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let lo = if lo < 0.0 { lo - 0.05 * (hi - lo) } else { 0.0 };
    let top = legend_headroom(lo, hi * 1.05, bars.series.len());
    let x_axis = Categories::new(groups);

    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&bars.title, (FONT, TITLE_SIZE))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_axis, lo..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(groups)
            .x_label_formatter(&|x| label_at(&bars.groups, *x))
            .y_label_formatter(&|y| tick(*y))
            .y_desc(bars.y_label.as_str())
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .draw()?;
        // Each group's bars share 80% of its slot, leaving a gap between groups.
        let width = 0.8 / bars.series.len() as f64;
        for (s, (name, vs)) in bars.series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            let left = 0.1 + s as f64 * width;
            let rects = vs.iter().take(groups).enumerate().filter_map(|(g, v)| finite(*v).map(|v| (g as f64 + left, v)));
            chart
                .draw_series(rects.map(|(x, v)| Rectangle::new([(x, 0.0), (x + width, v)], colour.filled())))?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
        }
        draw_legend(&mut chart)
    })
}

pub fn line_chart(path: &Path, lines: &Lines) -> Result<()> {
    // Sorted by x so a line never doubles back; points that cannot be placed are dropped.
    let series: Vec<(&str, Vec<(f64, f64)>)> = lines
        .series
        .iter()
        .map(|(name, points)| {
            let mut points: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name.as_str(), points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if series.is_empty() {
        return Err(plot_error(path, "a line chart needs at least one finite point"));
    }
    let reference = lines.reference_y.filter(|y| y.is_finite());
    let xs = || series.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.0));
    let ys = || series.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.1)).chain(reference);
    let (x0, x1) = widen(min(xs()), max(xs()));
    let (y0, y1) = widen(min(ys()), max(ys()));
    // A little room on every side so end points and their markers are not cut by the axes.
    let x_pad = 0.03 * (x1 - x0);
    let y_pad = 0.05 * (y1 - y0);
    let (x0, x1) = (x0 - x_pad, x1 + x_pad);
    // Non-negative data should not get a negative axis just from the padding.
    let y0 = if y0 >= 0.0 { (y0 - y_pad).max(0.0) } else { y0 - y_pad };
    let top = legend_headroom(y0, y1 + y_pad, series.len() + usize::from(reference.is_some()));

    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&lines.title, (FONT, TITLE_SIZE))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..top)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .x_desc(lines.x_label.as_str())
            .y_desc(lines.y_label.as_str())
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .draw()?;
        if let Some(r) = reference {
            let style = GREY_700.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(vec![(x0, r), (x1, r)], 8, 6, style))?
                .label(format!("y = {}", tick(r)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        for (s, (name, points)) in series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            // Filled markers show where the measurements are, as opposed to the interpolation between them.
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
        draw_legend(&mut chart)
    })
}

pub fn heat_map(path: &Path, heat: &Heat) -> Result<()> {
    let (nx, ny) = (heat.xs.len(), heat.ys.len());
    if nx == 0 || ny == 0 {
        return Err(plot_error(path, "a heat map needs at least one x and one y label"));
    }
    // Rows or columns missing from `values` are missing values, not an error.
    let cell = |x: usize, y: usize| heat.values.get(y).and_then(|row| row.get(x)).and_then(|v| finite(*v));
    let cells = || (0..ny).flat_map(move |y| (0..nx).map(move |x| (x, y)));
    let present: Vec<f64> = cells().filter_map(|(x, y)| cell(x, y)).collect();
    if present.is_empty() {
        return Err(plot_error(path, "every heat-map value is missing"));
    }
    let (lo, hi) = (min(present.iter().copied()), max(present.iter().copied()));
    let scale = Scale { lo, hi };
    // Shrink cell labels as cells get smaller so "123.45" stays inside its cell.
    let label_size = (560.0 / nx as f64 / 3.8).min(320.0 / ny as f64 * 0.5).clamp(7.0, 18.0);
    // Room for the longest row label plus the axis title beside it.
    let y_area = (40 + 7 * heat.ys.iter().map(|y| y.chars().count()).max().unwrap_or(0) as u32).clamp(80, 220);

    render(path, |root| {
        let body = root.titled(&heat.title, (FONT, TITLE_SIZE))?;
        let (main, side) = body.split_horizontally(SIZE.0 - COLOUR_BAR_W);
        let mut chart = ChartBuilder::on(&main)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(y_area)
            .build_cartesian_2d(Categories::new(nx), Categories::new(ny))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nx)
            .y_labels(ny)
            .x_label_formatter(&|x| label_at(&heat.xs, *x))
            .y_label_formatter(&|y| label_at(&heat.ys, *y))
            .x_desc(heat.x_label.as_str())
            .y_desc(heat.y_label.as_str())
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .draw()?;
        chart.draw_series(cells().map(|(x, y)| {
            let fill = match cell(x, y) {
                Some(v) => scale.colour(v).filled(),
                None => GREY_200.filled(),
            };
            Rectangle::new([(x as f64, y as f64), (x as f64 + 1.0, y as f64 + 1.0)], fill)
        }))?;
        // White borders keep neighbouring cells of similar colour apart.
        chart.draw_series(cells().map(|(x, y)| Rectangle::new([(x as f64, y as f64), (x as f64 + 1.0, y as f64 + 1.0)], WHITE.stroke_width(1))))?;
        let text = TextStyle::from((FONT, label_size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(cells().map(|(x, y)| {
            let label = cell(x, y).map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
            Text::new(label, (x as f64 + 0.5, y as f64 + 0.5), text.clone())
        }))?;
        colour_bar(&side, &scale, &heat.value_label)
    })
}

/// Maps a value to red (lowest) .. yellow .. green (highest). Hue alone
/// carries the value so lightness stays high enough for black labels.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
}

impl Scale {
    fn colour(&self, v: f64) -> HSLColor {
        // All-equal data has no low or high: show it in the neutral middle colour.
        let t = if self.hi > self.lo { ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0) } else { 0.5 };
        HSLColor(t * 120.0 / 360.0, 0.65, 0.62)
    }
}

/// The heat map's legend: the colour scale as a vertical bar with value ticks.
fn colour_bar(area: &Area, scale: &Scale, value_label: &str) -> Drawn {
    let (lo, hi) = widen(scale.lo, scale.hi);
    let mut chart = ChartBuilder::on(area)
        .margin_top(12)
        .margin_bottom(12 + 44) // level with the heat map's plotting area above its x labels
        .margin_right(8)
        .y_label_area_size(66)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    const STEPS: usize = 64;
    let step = (hi - lo) / STEPS as f64;
    chart.draw_series((0..STEPS).map(|i| {
        let y = lo + i as f64 * step;
        Rectangle::new([(0.0, y), (1.0, y + step)], scale.colour(y + step / 2.0).filled())
    }))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(10)
        .y_label_formatter(&|v| tick(*v))
        .y_desc(value_label)
        .label_style((FONT, TICK_SIZE - 2))
        .axis_desc_style((FONT, DESC_SIZE))
        .draw()?;
    Ok(())
}

fn draw_legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Drawn
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, TICK_SIZE))
        .draw()?;
    Ok(())
}

/// Draws into a string and writes it to `path` only when the whole chart drew.
fn render(path: &Path, draw: impl FnOnce(&Area) -> Drawn) -> Result<()> {
    let mut svg = String::new();
    // plotters asserts on some inputs it cannot lay out; a report must not die over one chart.
    let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Drawn {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    }));
    match drawn {
        Ok(Ok(())) => std::fs::write(path, svg).map_err(|e| BenchError::io(path, e)),
        Ok(Err(e)) => Err(plot_error(path, e.to_string())),
        Err(panic) => {
            let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(plot_error(path, format!("plotters panicked: {why}")))
        }
    }
}

fn plot_error(path: &Path, msg: impl Into<String>) -> BenchError {
    BenchError::Plot { path: path.to_path_buf(), msg: msg.into() }
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

fn min(vs: impl Iterator<Item = f64>) -> f64 {
    vs.fold(f64::INFINITY, f64::min)
}

fn max(vs: impl Iterator<Item = f64>) -> f64 {
    vs.fold(f64::NEG_INFINITY, f64::max)
}

/// `[lo, hi]`, opened up around a single value so the axis has a length.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        (lo, hi)
    } else {
        let pad = (lo.abs() * 0.1).max(0.5);
        (lo - pad, hi + pad)
    }
}

/// Top of a y range whose data ends at `hi`, raised so the data stays below
/// the legend in the upper right: a legend row is about 20 px of a plotting
/// area about 360 px high.
fn legend_headroom(lo: f64, hi: f64, rows: usize) -> f64 {
    let share = ((rows as f64 + 1.0) * 20.0 / 360.0).clamp(0.1, 0.5);
    lo + (hi - lo) / (1.0 - share)
}

/// A category axis: category i spans [i, i + 1], so bars and cells can sit at
/// fractions of it, and its one tick sits at the centre for the name.
/// (plotters' segmented axes only place whole segments, and its key-point
/// override cannot be given a label formatter.)
#[derive(Clone)]
struct Categories {
    linear: RangedCoordf64,
    n: usize,
}

impl Categories {
    fn new(n: usize) -> Self {
        Categories { linear: (0.0..n as f64).into(), n }
    }
}

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold points: light mesh lines between categories would mean nothing.
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        (0..self.n).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

fn label_at(labels: &[String], x: f64) -> String {
    // `as usize` saturates, so a stray negative tick lands on the first label.
    labels.get(x.floor() as usize).cloned().unwrap_or_default()
}

/// A tick value without float noise: 1, 0.5, 1.25, 1e6 rather than 1.2500000000000002.
fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_svg(path: &Path) -> String {
        let svg = std::fs::read_to_string(path).expect("the chart was written");
        assert!(svg.trim_start().starts_with("<svg"), "not an SVG: {}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        svg
    }

    fn bars() -> Bars {
        Bars {
            title: "Speedup by category".into(),
            y_label: "speedup (x)".into(),
            groups: vec!["predictable".into(), "semi-predictable".into(), "open-ended".into()],
            series: vec![("n=4".into(), vec![Some(2.1), Some(1.6), Some(1.1)]), ("n=8".into(), vec![Some(2.6), None, Some(0.9)])],
        }
    }

    fn lines() -> Lines {
        Lines {
            title: "Throughput vs concurrency".into(),
            x_label: "concurrency".into(),
            y_label: "tokens/s".into(),
            series: vec![("baseline".into(), vec![(1.0, 80.0), (4.0, 290.0), (2.0, 150.0)]), ("speculative".into(), vec![(1.0, 150.0), (2.0, 260.0), (4.0, 420.0)])],
            reference_y: Some(1.0),
        }
    }

    fn heat() -> Heat {
        Heat {
            title: "Speedup over draft length and temperature".into(),
            x_label: "draft tokens".into(),
            y_label: "temperature".into(),
            xs: vec!["2".into(), "4".into(), "8".into()],
            ys: vec!["0.0".into(), "0.7".into()],
            values: vec![vec![Some(1.234), Some(1.8), Some(2.2)], vec![Some(0.9), None, Some(1.5)]],
            value_label: "speedup".into(),
        }
    }

    #[test]
    fn bar_chart_writes_titled_svg_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.svg");
        bar_chart(&path, &bars()).unwrap();
        let svg = read_svg(&path);
        assert!(svg.contains("Speedup by category"));
        assert!(svg.contains("semi-predictable"));
        assert!(svg.contains("n=8"));
        assert!(svg.contains("speedup (x)"));
    }

    #[test]
    fn line_chart_writes_titled_svg_with_labels_and_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines.svg");
        line_chart(&path, &lines()).unwrap();
        let svg = read_svg(&path);
        assert!(svg.contains("Throughput vs concurrency"));
        assert!(svg.contains("speculative"));
        assert!(svg.contains("concurrency"));
        assert!(svg.contains("y = 1"));
    }

    #[test]
    fn heat_map_writes_titled_svg_with_cell_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heat.svg");
        heat_map(&path, &heat()).unwrap();
        let svg = read_svg(&path);
        assert!(svg.contains("Speedup over draft length and temperature"));
        assert!(svg.contains("draft tokens"));
        assert!(svg.contains("\n1.23\n"), "cells are labelled with 2 decimals");
        assert!(svg.contains("\n-\n"), "a missing cell is labelled -");
        assert!(svg.contains("speedup"));
    }

    #[test]
    fn text_is_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("escaped.svg");
        let mut b = bars();
        b.title = "p50 < p99 & more".into();
        bar_chart(&path, &b).unwrap();
        assert!(read_svg(&path).contains("p50 &lt; p99 &amp; more"));
    }

    #[test]
    fn degenerate_bars_error_or_draw_but_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.svg");
        let no_groups = Bars { groups: vec![], ..bars() };
        assert!(matches!(bar_chart(&path, &no_groups), Err(BenchError::Plot { .. })));
        let no_series = Bars { series: vec![], ..bars() };
        assert!(matches!(bar_chart(&path, &no_series), Err(BenchError::Plot { .. })));
        let all_none = Bars { series: vec![("a".into(), vec![None, None, None]), ("b".into(), vec![])], ..bars() };
        assert!(matches!(bar_chart(&path, &all_none), Err(BenchError::Plot { .. })));
        assert!(!path.exists(), "a failed chart writes no file");
        let nan = Bars { series: vec![("a".into(), vec![Some(f64::NAN), Some(f64::INFINITY), Some(1.0)])], ..bars() };
        bar_chart(&path, &nan).unwrap();
        read_svg(&path);
        let zeros = Bars { series: vec![("a".into(), vec![Some(0.0); 3])], ..bars() };
        bar_chart(&path, &zeros).unwrap();
        let negative = Bars { series: vec![("a".into(), vec![Some(-2.0), Some(3.0), Some(-0.5)])], ..bars() };
        bar_chart(&path, &negative).unwrap();
        let one = Bars { groups: vec!["only".into()], series: vec![("a".into(), vec![Some(5.0), Some(7.0)])], ..bars() };
        bar_chart(&path, &one).unwrap();
        assert!(read_svg(&path).contains("only"));
        let many = Bars { series: (0..30).map(|i| (format!("s{i}"), vec![Some(i as f64); 3])).collect(), ..bars() };
        bar_chart(&path, &many).unwrap();
    }

    #[test]
    fn degenerate_lines_error_or_draw_but_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.svg");
        let empty = Lines { series: vec![], ..lines() };
        assert!(matches!(line_chart(&path, &empty), Err(BenchError::Plot { .. })));
        let no_points = Lines { series: vec![("a".into(), vec![]), ("b".into(), vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])], ..lines() };
        assert!(matches!(line_chart(&path, &no_points), Err(BenchError::Plot { .. })));
        let single = Lines { series: vec![("a".into(), vec![(8.0, 3.0)])], reference_y: None, ..lines() };
        line_chart(&path, &single).unwrap();
        assert!(read_svg(&path).contains("Throughput vs concurrency"));
        let flat = Lines { series: vec![("a".into(), vec![(1.0, 1.0), (2.0, 1.0)])], reference_y: Some(1.0), ..lines() };
        line_chart(&path, &flat).unwrap();
        let zero = Lines { series: vec![("a".into(), vec![(0.0, 0.0)])], reference_y: Some(f64::NAN), ..lines() };
        line_chart(&path, &zero).unwrap();
        let huge = Lines { series: vec![("a".into(), vec![(1e-12, 1e12), (1e12, -1e12)])], ..lines() };
        line_chart(&path, &huge).unwrap();
    }

    #[test]
    fn degenerate_heat_maps_error_or_draw_but_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.svg");
        let no_xs = Heat { xs: vec![], ..heat() };
        assert!(matches!(heat_map(&path, &no_xs), Err(BenchError::Plot { .. })));
        let all_none = Heat { values: vec![vec![None; 3], vec![None, Some(f64::NAN), None]], ..heat() };
        assert!(matches!(heat_map(&path, &all_none), Err(BenchError::Plot { .. })));
        let ragged = Heat { values: vec![vec![Some(1.0)]], ..heat() };
        heat_map(&path, &ragged).unwrap();
        assert!(read_svg(&path).contains("1.00"));
        let single = Heat { xs: vec!["a".into()], ys: vec!["b".into()], values: vec![vec![Some(2.0)]], ..heat() };
        heat_map(&path, &single).unwrap();
        let big = Heat {
            xs: (0..40).map(|i| i.to_string()).collect(),
            ys: (0..30).map(|i| i.to_string()).collect(),
            values: (0..30).map(|y| (0..40).map(|x| Some((x * y) as f64)).collect()).collect(),
            ..heat()
        };
        heat_map(&path, &big).unwrap();
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("bars.svg");
        assert!(bar_chart(&path, &bars()).is_err());
    }

    #[test]
    fn ticks_drop_float_noise() {
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(1.2500000000000002), "1.25");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(2.0e7), "2.00e7");
    }
}
