//! The plots, as SVG files (plotters' SVG backend; text is written as SVG `<text>` elements, so
//! no font files or font libraries are needed):
//! - `throughput-p99.svg`: throughput against p99 latency across the sweep, one point per level
//!   of outstanding commands, labelled; etcd's levels beside them when `--peers` ran it;
//! - `latency-percentiles.svg`: each step's latency distribution the way HdrHistogram plots it,
//!   latency against percentile on a log-scaled `1/(1-p)` axis, one curve per step;
//! - `memory.svg` (when the nodes' memory was sampled): each node's RSS and anonymous RSS over
//!   the measured windows, one after the other.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::report::BenchReport;

pub(crate) const THROUGHPUT_P99_FILE: &str = "throughput-p99.svg";
pub(crate) const PERCENTILES_FILE: &str = "latency-percentiles.svg";
pub(crate) const MEMORY_FILE: &str = "memory.svg";

const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";

/// Colour of the `index`th series.
fn colour(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLOURS[index % COLOURS.len()]
}

/// Writes the plots into `dir`; returns their paths.
pub(crate) fn write_plots(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let mut plots = vec![
        (THROUGHPUT_P99_FILE, throughput_p99 as fn(&BenchReport) -> Result<String, String>),
        (PERCENTILES_FILE, percentiles),
    ];
    if report.steps.iter().any(|s| s.memory.is_some()) {
        plots.push((MEMORY_FILE, memory));
    }
    for (file, draw) in plots {
        let path = dir.join(file);
        let svg = draw(report).map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        std::fs::write(&path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A log range around `values` (all > 0), padded by a factor on each side.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(low, high), v| (low.min(v), high.max(v)));
    if low.is_finite() { (low / 1.5, high * 1.5) } else { (0.1, 10.0) }
}

/// One level of a sweep: throughput per second, p99 in ms, commands outstanding.
type LevelPoint = (f64, f64, u64);

fn throughput_p99(report: &BenchReport) -> Result<String, String> {
    let mut series: Vec<(String, Vec<LevelPoint>)> = vec![(
        "smr".to_owned(),
        report
            .steps
            .iter()
            .filter_map(|s| Some((s.throughput_per_sec, s.latency_us.as_ref()?.p99 / 1_000.0, s.outstanding as u64)))
            .collect(),
    )];
    if let Some(peers) = &report.peers {
        let label = format!("etcd {}", peers.etcd.version);
        let points = peers.etcd.rows.iter().map(|r| (r.ops_per_s, r.p99_us / 1_000.0, r.clients)).collect();
        series.push((label, points));
    }
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)).fold(0.0f64, f64::max).max(1.0) * 1.15;
    let (y_min, y_max) = log_bounds(series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let caption = format!(
            "Throughput against p99 latency, {} nodes, {} B values (labels: commands outstanding)",
            report.nodes, report.value_bytes
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 20))
            .margin(20)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("puts per second")
            .y_desc("p99 latency, ms (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| short(*y))
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, (label, points)) in series.iter().enumerate() {
            let colour = colour(index);
            chart
                .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            // Each point a dot with its level of outstanding commands beside it.
            chart
                .draw_series(points.iter().map(|p| {
                    EmptyElement::at((p.0, p.1))
                        + Circle::new((0, 0), 4, colour.filled())
                        + Text::new(format!("{}", p.2), (7, -18), (FONT, 14).into_font().color(&colour))
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The `1/(1-p)` axis from 1 to `end`: log-scaled, labelled with percentiles.
#[derive(Clone, Debug)]
struct InverseTail {
    end: f64,
}

impl Ranged for InverseTail {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = value.max(1.0).log10() / self.end.log10();
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        // 0 %, 90 %, 99 %, 99.9 %, ... up to the end.
        (0..=9).map(|decade| 10f64.powi(decade)).filter(|x| *x <= self.end).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        1.0..self.end
    }
}

impl ValueFormatter<f64> for InverseTail {
    fn format_ext(&self, value: &f64) -> String {
        percentile_label(*value)
    }
}

/// A tick label of up to three significant digits: 0.0123, 1.5, 250, 12000.
fn short(value: f64) -> String {
    if value <= 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let decimals = (2 - value.log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// The percentile whose `1/(1-p)` is `inverse_tail`, as a label: 1 → "0%", 10 → "90%",
/// 1000 → "99.9%".
pub(crate) fn percentile_label(inverse_tail: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / inverse_tail);
    let text = format!("{percent:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn percentiles(report: &BenchReport) -> Result<String, String> {
    // (label, points of (1/(1-p), latency ms)); the maximum (p = 100 %) has no place on this
    // axis and is left out.
    let series: Vec<(String, Vec<(f64, f64)>)> = report
        .steps
        .iter()
        .map(|step| {
            let points = step
                .latency_percentiles
                .iter()
                .filter(|p| p.percentile < 100.0)
                .map(|p| (1.0 / (1.0 - p.percentile / 100.0), p.latency_us / 1_000.0))
                .collect();
            (format!("{} outstanding", step.outstanding), points)
        })
        .collect();
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)).fold(10.0f64, f64::max);
    let x_max = 10f64.powf(x_max.log10().ceil());
    let (y_min, y_max) = log_bounds(series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let caption =
            format!("Latency by percentile, {} nodes, {} B values, closed loop", report.nodes, report.value_bytes);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 20))
            .margin(20)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(InverseTail { end: x_max }, (y_min..y_max).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale of 1/(1-p))")
            .y_desc("latency, ms (log scale)")
            .y_label_formatter(&|y| short(*y))
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, (label, points)) in series.iter().enumerate() {
            let colour = colour(index);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Seconds since the first window opened, RSS in MiB, anonymous RSS in MiB.
type MemorySample = (f64, f64, Option<f64>);

fn memory(report: &BenchReport) -> Result<String, String> {
    let nodes = report.steps.iter().filter_map(|s| s.memory.as_ref()).map(Vec::len).max().unwrap_or(0);
    // Per node, per step, its samples.
    let mut lines: Vec<Vec<Vec<MemorySample>>> = vec![Vec::new(); nodes];
    let mut offset = 0.0;
    for step in &report.steps {
        for node in step.memory.iter().flatten() {
            let points = node
                .series
                .iter()
                .map(|p| (offset + p.secs, p.rss_kib as f64 / 1024.0, p.anon_kib.map(|k| k as f64 / 1024.0)))
                .collect();
            if let Some(slot) = lines.get_mut(node.node.saturating_sub(1)) {
                slot.push(points);
            }
        }
        offset += step.window_secs;
    }
    let y_max = lines.iter().flatten().flatten().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let levels: Vec<String> = report.steps.iter().map(|s| s.outstanding.to_string()).collect();
        let caption = format!("Memory of each node over the measured windows (outstanding: {})", levels.join(", "));
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 20))
            .margin(20)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..offset.max(1.0), 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds of measured load (steps one after the other)")
            .y_desc("MiB")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, steps) in lines.iter().enumerate() {
            let colour = colour(index);
            let faint = colour.mix(0.5);
            for (step, points) in steps.iter().enumerate() {
                let rss = chart
                    .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), colour.stroke_width(2)))
                    .map_err(|e| e.to_string())?;
                if step == 0 {
                    rss.label(format!("node {} RSS", index + 1))
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
                }
                let anon = chart
                    .draw_series(LineSeries::new(
                        points.iter().filter_map(|p| Some((p.0, p.2?))),
                        faint.stroke_width(1),
                    ))
                    .map_err(|e| e.to_string())?;
                if step == 0 {
                    anon.label(format!("node {} anonymous", index + 1))
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], faint.stroke_width(1)));
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::tests::{report_of, step};
    use crate::report::percentile_curve;

    /// A report of three steps with latency curves from synthetic histograms.
    fn synthetic() -> BenchReport {
        let mut steps = vec![
            step(1, 1300.0, 730.0, 1420.0),
            step(16, 8400.0, 1770.0, 4360.0),
            step(256, 44_600.0, 5400.0, 11_500.0),
        ];
        for (n, step) in steps.iter_mut().enumerate() {
            let mut h = smr_bench::load::new_histogram();
            for i in 1..=20_000u64 {
                h.record((n as u64 + 1) * 500_000 + i * 50).unwrap();
            }
            step.latency_percentiles = percentile_curve(&h);
        }
        report_of(steps)
    }

    fn texts(document: &roxmltree::Document<'_>) -> Vec<String> {
        document
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| {
                n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).collect::<String>().trim().to_owned()
            })
            .collect()
    }

    fn count(document: &roxmltree::Document<'_>, tag: &str) -> usize {
        document.descendants().filter(|n| n.has_tag_name(tag)).count()
    }

    #[test]
    fn plots_are_written_as_valid_svg_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let report = synthetic();
        let paths = write_plots(&report, dir.path()).unwrap();
        assert_eq!(paths, [dir.path().join(THROUGHPUT_P99_FILE), dir.path().join(PERCENTILES_FILE)]);

        let text = std::fs::read_to_string(&paths[0]).unwrap();
        let svg = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not XML: {e}\n{text}"));
        assert!(svg.root_element().has_tag_name("svg"));
        let labels = texts(&svg);
        // One labelled point per level, the legend, the axis titles.
        for expected in ["1", "16", "256", "smr", "puts per second", "p99 latency, ms (log scale)"] {
            assert!(labels.iter().any(|l| l == expected), "no text {expected:?} in {labels:?}");
        }
        assert!(labels.iter().any(|l| l.starts_with("Throughput against p99 latency")), "{labels:?}");
        assert_eq!(count(&svg, "circle"), 3, "{text}");
        // The series' line and its legend sample.
        assert!(count(&svg, "polyline") >= 2, "{text}");

        let text = std::fs::read_to_string(&paths[1]).unwrap();
        let svg = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not XML: {e}\n{text}"));
        let labels = texts(&svg);
        for expected in ["1 outstanding", "16 outstanding", "256 outstanding", "0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(labels.iter().any(|l| l == expected), "no text {expected:?} in {labels:?}");
        }
        // Three curves and three legend samples; each curve has 44 points: 1/(1-p) from 10^0 to
        // 10^4.3, the most 20,000 samples tell apart.
        let lines: Vec<usize> = svg
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| n.attribute("points").unwrap_or("").split_whitespace().count())
            .collect();
        assert_eq!(lines.iter().filter(|&&points| points == 44).count(), 3, "{lines:?}");
    }

    #[test]
    fn peers_appear_on_the_throughput_plot() {
        use crate::peers::{
            PeersReport, parse_etcd, parse_machine_limits,
            tests::{ETCD_JSON, MACHINE_JSON},
        };
        let mut report = synthetic();
        let machine = parse_machine_limits(Path::new("m.json"), MACHINE_JSON.as_bytes()).unwrap();
        let etcd = parse_etcd(Path::new("e.json"), ETCD_JSON.as_bytes()).unwrap();
        report.peers = Some(PeersReport::new(&report.steps, machine, etcd, "m.json".into(), "e.json".into()));
        let svg = throughput_p99(&report).unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap();
        assert!(texts(&document).iter().any(|l| l == "etcd 3.4.23"));
        assert_eq!(count(&document, "circle"), 6);
    }

    #[test]
    fn memory_is_plotted_when_it_was_sampled() {
        use crate::memory::{MemoryPoint, NodeMemory};
        let dir = tempfile::tempdir().unwrap();
        let mut report = synthetic();
        for step in &mut report.steps {
            step.memory = Some(
                (1..=3)
                    .map(|node| NodeMemory {
                        node,
                        peak_rss_kib: Some(200_000),
                        max_sampled_rss_kib: Some(150_000),
                        rss_first_kib: Some(100_000.0),
                        rss_last_kib: Some(150_000.0),
                        growth_kib: Some(50_000.0),
                        slope_kib_per_min: Some(300_000.0),
                        anon_last_kib: Some(75_000.0),
                        anon_growth_kib: Some(25_000.0),
                        anon_slope_kib_per_min: Some(150_000.0),
                        anon_late_slope_kib_per_min: Some(100_000.0),
                        stretch_secs: 3.0,
                        samples: 11,
                        series: (0..=10)
                            .map(|s| MemoryPoint {
                                secs: f64::from(s),
                                rss_kib: 100_000 + 5_000 * s as u64,
                                anon_kib: Some(50_000 + 2_500 * s as u64),
                            })
                            .collect(),
                    })
                    .collect(),
            );
        }
        let paths = write_plots(&report, dir.path()).unwrap();
        assert_eq!(paths.len(), 3);
        assert_eq!(paths[2], dir.path().join(MEMORY_FILE));
        let text = std::fs::read_to_string(&paths[2]).unwrap();
        let svg = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not XML: {e}\n{text}"));
        let labels = texts(&svg);
        for expected in ["node 1 RSS", "node 3 RSS", "node 2 anonymous", "MiB"] {
            assert!(labels.iter().any(|l| l == expected), "no text {expected:?} in {labels:?}");
        }
        // 3 nodes x 3 steps x (RSS + anonymous) lines of 11 points each.
        let lines = svg
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter(|n| n.attribute("points").unwrap_or("").split_whitespace().count() == 11)
            .count();
        assert_eq!(lines, 18, "{text}");
    }

    #[test]
    fn an_empty_report_still_plots() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_plots(&report_of(Vec::new()), dir.path()).unwrap();
        for path in paths {
            roxmltree::Document::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short(0.012345), "0.0123");
        assert_eq!(short(1.5), "1.5");
        assert_eq!(short(2.0), "2");
        assert_eq!(short(250.4), "250");
        assert_eq!(short(12_345.0), "12345");
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(1e6), "99.9999%");
    }
}
