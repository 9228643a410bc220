//! Admin requests to nodes: who leads, and their metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smr_net::{AdminRequest, Client, ClientConfig, RequestBody, ResponseBody};
use smr_runtime::metrics::{HistogramReport, MetricsReport};

fn admin(address: SocketAddr, request: AdminRequest) -> Result<Bytes, String> {
    let config = ClientConfig { response_ms: 2_000, connect_ms: 500, ..ClientConfig::default() };
    let mut client = Client::connect(&[address], config).map_err(|e| format!("{address}: {e}"))?;
    client.submit(RequestBody::Admin(request)).map_err(|e| format!("{address}: {e}"))?;
    match client.recv().map_err(|e| format!("{address}: {e}"))?.body {
        ResponseBody::Ok(bytes) => Ok(bytes),
        other => Err(format!("{address} answered {other:?}")),
    }
}

/// The node's status (`smr ctl status`) as JSON.
pub fn status(address: SocketAddr) -> Result<serde_json::Value, String> {
    let bytes = admin(address, AdminRequest::Status)?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{address}: status is not JSON: {e}"))
}

/// Polls every node's status until one says it leads; returns its client address.
pub fn wait_for_leader(addresses: &[SocketAddr], patience: Duration) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + patience;
    loop {
        let mut last = Vec::new();
        for &address in addresses {
            match status(address) {
                Ok(status) if status["role"] == "leader" => return Ok(address),
                Ok(status) => last.push(format!("{address}: {} in term {}", status["role"], status["term"])),
                Err(error) => last.push(error),
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no leader within {patience:?}; last answers: {}", last.join("; ")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One node's metrics report (cumulative since the node started, as of each stage's last
/// publish) and when it was taken.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    pub address: SocketAddr,
    pub report: MetricsReport,
}

pub fn stats(address: SocketAddr) -> Result<StatsSnapshot, String> {
    let bytes = admin(address, AdminRequest::Stats)?;
    let report = MetricsReport::from_json(&bytes).map_err(|e| format!("{address}: {e}"))?;
    Ok(StatsSnapshot { address, report })
}

impl StatsSnapshot {
    pub fn histogram(&self, stage: &str, name: &str) -> Option<&HistogramReport> {
        let stage = self.report.stages.iter().find(|s| s.stage == stage)?;
        stage.histograms.iter().find(|h| h.name == name)
    }

    /// The mean of what `stage`'s histogram `name` recorded between `earlier` and `self`, from
    /// the counts and means (sum = count × mean); `None` when nothing was recorded in between,
    /// or the two are not of the same node.
    pub fn mean_since(&self, earlier: &StatsSnapshot, stage: &str, name: &str) -> Option<f64> {
        if self.address != earlier.address || self.report.uptime_ms < earlier.report.uptime_ms {
            return None;
        }
        let now = self.histogram(stage, name)?;
        let before = earlier.histogram(stage, name)?;
        let count = now.count.checked_sub(before.count).filter(|&c| c > 0)?;
        let sum = now.count as f64 * now.mean - before.count as f64 * before.mean;
        Some(sum / count as f64)
    }

    /// Every counter's increase since `earlier` (of the same node), by name.
    pub fn counters_since(&self, earlier: &StatsSnapshot) -> Option<Vec<(&'static str, u64)>> {
        if self.address != earlier.address {
            return None;
        }
        let before = earlier.report.counters.fields();
        Some(
            self.report
                .counters
                .fields()
                .into_iter()
                .zip(before)
                .map(|((name, now), (_, then))| (name, now.saturating_sub(then)))
                .collect(),
        )
    }
}
