//! Memory of the node processes over a step: a thread reads every node's resident set size
//! (`VmRSS`) about once a second while the step runs, and at the end its peak (`VmHWM`). From the
//! samples taken in the measured window each node gets its growth (the mean of the window's last
//! stretch minus the mean of its first, each stretch a minute, or a third of a shorter window)
//! and a least-squares slope, so that a long run (`--duration-secs 300`) shows whether memory
//! stays flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procstat;

/// How often each node's RSS is read.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept per step: a day at one a second. Past that, sampling stops (the step's figures
/// then cover its first day).
const SAMPLES_MAX: usize = 86_400;
/// The stretch at each end of the window whose samples are averaged for the growth.
const GROWTH_STRETCH: Duration = Duration::from_secs(60);

/// One reading of every node: when (since sampling began) and each node's RSS and anonymous
/// RSS in KiB (`None` if its `/proc` entry could not be read, e.g. it had exited).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) at: Duration,
    pub(crate) rss_kib: Vec<Option<u64>>,
    pub(crate) anon_kib: Vec<Option<u64>>,
}

/// Samples every node's RSS on a thread until stopped.
#[derive(Debug)]
pub(crate) struct Sampler {
    pids: Vec<u32>,
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

fn sample(pids: &[u32], at: Duration) -> Sample {
    let memory: Vec<Option<procstat::Memory>> = pids.iter().map(|&pid| procstat::memory_of_pid(pid).ok()).collect();
    Sample {
        at,
        rss_kib: memory.iter().map(|m| Some(m.as_ref()?.rss_kib)).collect(),
        anon_kib: memory.iter().map(|m| m.as_ref()?.anon_kib).collect(),
    }
}

impl Sampler {
    /// Starts sampling `pids` now (a first sample at once).
    pub(crate) fn start(pids: &[u32]) -> Result<Sampler, String> {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let pids = pids.to_vec();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("rss-sampler".to_owned())
                .spawn(move || {
                    let mut samples = Vec::new();
                    let mut next = started;
                    while !stop.load(Ordering::Relaxed) && samples.len() < SAMPLES_MAX {
                        samples.push(sample(&pids, started.elapsed()));
                        next += SAMPLE_INTERVAL;
                        // Short sleeps, so that stopping does not wait for a whole interval.
                        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
                        }
                    }
                    samples
                })
                .map_err(|e| format!("cannot start the RSS sampler thread: {e}"))?
        };
        Ok(Sampler { pids: pids.to_vec(), started, stop, thread: Some(thread) })
    }

    /// Time since sampling began: where a window's edges fall among the samples.
    pub(crate) fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    /// Stops sampling and sums up the window `[from, to]` (times since sampling began).
    pub(crate) fn finish(mut self, from: Duration, to: Duration) -> Vec<NodeMemory> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        // A last sample at the end, so a short window still has one at each edge.
        samples.push(sample(&self.pids, self.started.elapsed()));
        let peaks: Vec<Option<u64>> =
            self.pids.iter().map(|&pid| procstat::memory_of_pid(pid).ok().map(|m| m.peak_rss_kib)).collect();
        summarize(&samples, &peaks, from, to)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One node's memory over a step's measured window, in KiB.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct NodeMemory {
    /// 1-based, in the order the nodes were started.
    pub(crate) node: usize,
    /// `VmHWM` at the end of the step: the highest RSS since the node started.
    pub(crate) peak_rss_kib: Option<u64>,
    /// The highest RSS sampled in the window.
    pub(crate) max_sampled_rss_kib: Option<u64>,
    /// Mean RSS of the samples in the window's first stretch, and in its last.
    pub(crate) rss_first_kib: Option<f64>,
    pub(crate) rss_last_kib: Option<f64>,
    /// `rss_last_kib - rss_first_kib`.
    pub(crate) growth_kib: Option<f64>,
    /// Least-squares slope of RSS over the window, KiB per minute (at least 3 samples).
    pub(crate) slope_kib_per_min: Option<f64>,
    /// The same growth and slope of the anonymous RSS alone (heap, stacks): RSS also counts
    /// the pages of the node's memory-mapped log that were touched, which grow with the log and
    /// are the kernel's to reclaim.
    pub(crate) anon_last_kib: Option<f64>,
    pub(crate) anon_growth_kib: Option<f64>,
    pub(crate) anon_slope_kib_per_min: Option<f64>,
    /// The anonymous RSS's slope over the window's second half alone: a node's heap fills its
    /// caches and allocator pools in the first minutes, so growth that goes on shows here.
    pub(crate) anon_late_slope_kib_per_min: Option<f64>,
    /// The stretch averaged at each end, in seconds.
    pub(crate) stretch_secs: f64,
    /// Samples in the window.
    pub(crate) samples: usize,
    /// Every sample of the window, for plotting or a closer look.
    pub(crate) series: Vec<MemoryPoint>,
}

/// One sample of one node: seconds into the window, RSS and anonymous RSS in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct MemoryPoint {
    pub(crate) secs: f64,
    pub(crate) rss_kib: u64,
    pub(crate) anon_kib: Option<u64>,
}

/// Each node's memory over the window `[from, to]`, from `samples` and the final `peaks`.
pub(crate) fn summarize(samples: &[Sample], peaks: &[Option<u64>], from: Duration, to: Duration) -> Vec<NodeMemory> {
    let window = to.saturating_sub(from);
    let stretch = GROWTH_STRETCH.min(window / 3).max(SAMPLE_INTERVAL);
    peaks
        .iter()
        .enumerate()
        .map(|(index, &peak)| {
            let rss = Series::of(samples, from, to, stretch, |s| s.rss_kib.get(index).copied().flatten());
            let anon = Series::of(samples, from, to, stretch, |s| s.anon_kib.get(index).copied().flatten());
            NodeMemory {
                node: index + 1,
                peak_rss_kib: peak,
                max_sampled_rss_kib: rss.points.iter().map(|p| p.1 as u64).max(),
                rss_first_kib: rss.first,
                rss_last_kib: rss.last,
                growth_kib: rss.growth(),
                slope_kib_per_min: rss.slope_per_min(),
                anon_last_kib: anon.last,
                anon_growth_kib: anon.growth(),
                anon_slope_kib_per_min: anon.slope_per_min(),
                anon_late_slope_kib_per_min: anon.late_slope_per_min(),
                stretch_secs: stretch.as_secs_f64(),
                samples: rss.points.len(),
                series: samples
                    .iter()
                    .filter(|s| s.at >= from && s.at <= to)
                    .filter_map(|s| {
                        Some(MemoryPoint {
                            secs: s.at.saturating_sub(from).as_secs_f64(),
                            rss_kib: s.rss_kib.get(index).copied().flatten()?,
                            anon_kib: s.anon_kib.get(index).copied().flatten(),
                        })
                    })
                    .collect(),
            }
        })
        .collect()
}

/// One node's readings of one kind in a window: (seconds into the window, KiB), and the means
/// of the first and last stretch.
struct Series {
    points: Vec<(f64, f64)>,
    first: Option<f64>,
    last: Option<f64>,
}

impl Series {
    fn of(
        samples: &[Sample],
        from: Duration,
        to: Duration,
        stretch: Duration,
        value: impl Fn(&Sample) -> Option<u64>,
    ) -> Series {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .filter_map(|s| Some((s.at.saturating_sub(from).as_secs_f64(), value(s)? as f64)))
            .collect();
        let mean_between = |lo: f64, hi: f64| {
            let values: Vec<f64> = points.iter().filter(|(t, _)| *t >= lo && *t <= hi).map(|p| p.1).collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let end = to.saturating_sub(from).as_secs_f64();
        let first = mean_between(0.0, stretch.as_secs_f64());
        let last = mean_between(end - stretch.as_secs_f64(), end);
        Series { points, first, last }
    }

    fn growth(&self) -> Option<f64> {
        self.first.zip(self.last).map(|(a, b)| b - a)
    }

    fn slope_per_min(&self) -> Option<f64> {
        slope(&self.points).map(|per_sec| per_sec * 60.0)
    }

    /// [`Series::slope_per_min`] of the points in the second half of the window.
    fn late_slope_per_min(&self) -> Option<f64> {
        let end = self.points.last()?.0;
        let late: Vec<(f64, f64)> = self.points.iter().copied().filter(|p| p.0 >= end / 2.0).collect();
        slope(&late).map(|per_sec| per_sec * 60.0)
    }
}

/// Least-squares slope of `(x, y)` points; `None` for fewer than 3 or all at one `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[(u64, [Option<u64>; 2])]) -> Vec<Sample> {
        values
            .iter()
            .map(|(secs, rss)| Sample {
                at: Duration::from_secs(*secs),
                rss_kib: rss.to_vec(),
                anon_kib: rss.iter().map(|r| r.map(|kib| kib / 2)).collect(),
            })
            .collect()
    }

    #[test]
    fn growth_and_slope_over_a_long_window() {
        // Node 1 flat at 100 MiB; node 2 grows 1 MiB a minute. Window 10 s .. 310 s.
        let all: Vec<(u64, [Option<u64>; 2])> =
            (0..=320u64).map(|s| (s, [Some(102_400), Some(102_400 + s.saturating_sub(10) * 1024 / 60)])).collect();
        let memory = summarize(
            &samples(&all),
            &[Some(110_000), Some(120_000)],
            Duration::from_secs(10),
            Duration::from_secs(310),
        );
        assert_eq!(memory.len(), 2);
        assert_eq!(memory[0].growth_kib, Some(0.0));
        assert_eq!(memory[0].slope_kib_per_min, Some(0.0));
        assert_eq!(memory[0].peak_rss_kib, Some(110_000));
        assert_eq!(memory[0].samples, 301);
        assert_eq!(memory[0].series.len(), 301);
        assert_eq!(memory[1].series[300], MemoryPoint { secs: 300.0, rss_kib: 107_520, anon_kib: Some(53_760) });
        assert_eq!(memory[0].stretch_secs, 60.0);
        // The means of the first and last minutes are 4 minutes apart: about 4 MiB.
        let growth = memory[1].growth_kib.unwrap();
        assert!((growth - 4.0 * 1024.0).abs() < 20.0, "{growth}");
        let slope = memory[1].slope_kib_per_min.unwrap();
        assert!((slope - 1024.0).abs() < 5.0, "{slope}");
        assert_eq!(memory[1].max_sampled_rss_kib, Some(102_400 + 300 * 1024 / 60));
        // The anonymous part (half of it here) is summed up the same way.
        let anon = memory[1].anon_slope_kib_per_min.unwrap();
        assert!((anon - 512.0).abs() < 5.0, "{anon}");
        assert_eq!(memory[0].anon_growth_kib, Some(0.0));
        let late = memory[1].anon_late_slope_kib_per_min.unwrap();
        assert!((late - 512.0).abs() < 5.0, "{late}");
    }

    #[test]
    fn a_heap_that_fills_then_levels_off_shows_a_flat_second_half() {
        // RSS rises 1 MiB per minute for 2 minutes, then stays (the anonymous half of it too).
        let all: Vec<(u64, [Option<u64>; 2])> =
            (0..=300u64).map(|s| (s, [Some(102_400 + s.min(120) * 1024 / 60), None])).collect();
        let memory = summarize(&samples(&all), &[Some(110_000), None], Duration::ZERO, Duration::from_secs(300));
        let whole = memory[0].anon_slope_kib_per_min.unwrap();
        assert!(whole > 150.0, "the whole window's slope counts the filling: {whole}");
        assert_eq!(memory[0].anon_late_slope_kib_per_min, Some(0.0));
    }

    #[test]
    fn a_short_window_uses_thirds_and_missing_readings_are_skipped() {
        let all = [(0, [Some(10), None]), (1, [Some(10), None]), (2, [Some(40), None]), (3, [Some(40), None])];
        let memory = summarize(&samples(&all), &[Some(50), None], Duration::ZERO, Duration::from_secs(3));
        assert_eq!(memory[0].stretch_secs, 1.0);
        assert_eq!(memory[0].rss_first_kib, Some(10.0));
        assert_eq!(memory[0].rss_last_kib, Some(40.0));
        assert_eq!(memory[0].growth_kib, Some(30.0));
        // Node 2 was never read: nothing made up.
        assert_eq!(memory[1].samples, 0);
        assert_eq!((memory[1].growth_kib, memory[1].slope_kib_per_min, memory[1].peak_rss_kib), (None, None, None));
    }

    #[test]
    fn samples_this_process() {
        let sampler = Sampler::start(&[std::process::id()]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let memory = sampler.finish(Duration::ZERO, Duration::from_secs(10));
        assert_eq!(memory.len(), 1);
        // The sample at start and the one at finish.
        assert!(memory[0].samples >= 2, "{memory:?}");
        assert!(memory[0].peak_rss_kib.unwrap() >= memory[0].max_sampled_rss_kib.unwrap());
    }
}
