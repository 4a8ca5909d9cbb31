//! Prometheus metrics of one run, in the text exposition format, written atomically for
//! node_exporter's textfile collector (`--metrics-file`): the run's outcome and duration,
//! what it applied, and per node what is pending, whether it answered, and its replication
//! lag where known. The format comes from `prometheus-client` (escaping, HELP/TYPE lines);
//! the collector reads OpenMetrics' `# EOF` line as a comment.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What one run of a command leaves for monitoring.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    /// `upgrade`, `status`, `deploy`.
    pub command: String,
    pub finished: SystemTime,
    pub duration: Duration,
    pub exit_code: u8,
    /// Patches (or packages) this run applied.
    pub applied: usize,
    /// Per node, as read after the run; empty when the cluster could not be read at all.
    pub nodes: Vec<NodeMetrics>,
}

/// One node after the run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetrics {
    pub node: String,
    pub up: bool,
    /// Patches this node still needs; `None` when it could not be read.
    pub pending: Option<usize>,
    /// Replication lag in seconds, where known (standbys, subscribers).
    pub lag_seconds: Option<f64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    command: String,
}

type IntFamily<L> = Family<L, Gauge>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics in the text exposition format.
pub fn encode(m: &RunMetrics) -> String {
    let mut registry = Registry::with_prefix("pgconvoy");
    let int = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    let float = |v: f64| {
        let g = FloatGauge::default();
        g.set(v);
        g
    };
    let finished = m
        .finished
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    registry.register(
        "last_run_timestamp_seconds",
        "When the last run finished, in seconds since the epoch",
        float(finished),
    );
    registry.register(
        "last_run_success",
        "1 if the last run exited 0, else 0",
        int(i64::from(m.exit_code == 0)),
    );
    registry.register(
        "last_run_exit_code",
        "Exit code of the last run (1 failed, 2 bad input or drift, 3 busy, 130 interrupted)",
        int(i64::from(m.exit_code)),
    );
    registry.register(
        "run_duration_seconds",
        "How long the last run took",
        float(m.duration.as_secs_f64()),
    );
    registry.register(
        "patches_applied",
        "Patches (deploy: packages) the last run applied to the cluster",
        int(i64::try_from(m.applied).unwrap_or(i64::MAX)),
    );
    let info = IntFamily::<CommandLabel>::default();
    info.get_or_create(&CommandLabel {
        command: m.command.clone(),
    })
    .set(1);
    registry.register(
        "last_run_info",
        "The command of the last run (always 1)",
        info,
    );
    let pending = IntFamily::<NodeLabel>::default();
    let up = IntFamily::<NodeLabel>::default();
    let lag = Family::<NodeLabel, FloatGauge>::default();
    for n in &m.nodes {
        let label = NodeLabel {
            node: n.node.clone(),
        };
        up.get_or_create(&label).set(i64::from(n.up));
        if let Some(p) = n.pending {
            pending
                .get_or_create(&label)
                .set(i64::try_from(p).unwrap_or(i64::MAX));
        }
        if let Some(l) = n.lag_seconds {
            lag.get_or_create(&label).set(l);
        }
    }
    registry.register(
        "pending_patches",
        "Patches the node still needs, read after the run",
        pending,
    );
    registry.register(
        "node_up",
        "1 if the node answered after the run, else 0",
        up,
    );
    registry.register(
        "replication_lag_seconds",
        "Replication lag of the node (standby replay, subscription), where known",
        lag,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding into a String cannot fail");
    text
}

/// Writes `text` to `path` atomically, as node_exporter's textfile collector needs: a
/// temp file in the same directory (a rename is atomic only within one file system),
/// readable by others (the collector usually runs as another user), flushed to disk,
/// then renamed over `path`. A failure leaves no temp file behind.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgconvoy-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit_code: u8) -> RunMetrics {
        RunMetrics {
            command: "upgrade".into(),
            finished: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            duration: Duration::from_millis(1500),
            exit_code,
            applied: 2,
            nodes: vec![
                NodeMetrics {
                    node: "node0".into(),
                    up: true,
                    pending: Some(0),
                    lag_seconds: None,
                },
                NodeMetrics {
                    node: "node1".into(),
                    up: false,
                    pending: None,
                    lag_seconds: Some(0.5),
                },
            ],
        }
    }

    /// Every sample line: `name{labels} value`, as a scraper splits it.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("series and value");
                (series.to_string(), value.parse::<f64>().expect("a number"))
            })
            .collect()
    }

    #[test]
    fn every_metric_has_help_type_and_parses() {
        let text = encode(&run(1));
        for name in [
            "pgconvoy_last_run_timestamp_seconds",
            "pgconvoy_last_run_success",
            "pgconvoy_last_run_exit_code",
            "pgconvoy_run_duration_seconds",
            "pgconvoy_patches_applied",
            "pgconvoy_pending_patches",
            "pgconvoy_node_up",
            "pgconvoy_replication_lag_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name}:\n{text}"
            );
        }
        let s = samples(&text);
        assert!(s.iter().all(|(series, _)| series.starts_with("pgconvoy_")));
        let get = |series: &str| s.iter().find(|(k, _)| k == series).map(|(_, v)| *v);
        assert_eq!(get("pgconvoy_last_run_success"), Some(0.0));
        assert_eq!(get("pgconvoy_last_run_exit_code"), Some(1.0));
        assert_eq!(
            get("pgconvoy_last_run_timestamp_seconds"),
            Some(1_700_000_000.25)
        );
        assert_eq!(get("pgconvoy_run_duration_seconds"), Some(1.5));
        assert_eq!(get("pgconvoy_patches_applied"), Some(2.0));
        assert_eq!(get("pgconvoy_pending_patches{node=\"node0\"}"), Some(0.0));
        // An unreadable node has no pending sample, and says it is down.
        assert_eq!(get("pgconvoy_pending_patches{node=\"node1\"}"), None);
        assert_eq!(get("pgconvoy_node_up{node=\"node1\"}"), Some(0.0));
        assert_eq!(
            get("pgconvoy_replication_lag_seconds{node=\"node1\"}"),
            Some(0.5)
        );
        assert_eq!(
            get("pgconvoy_last_run_info{command=\"upgrade\"}"),
            Some(1.0)
        );
        assert!(text.contains("pgconvoy_last_run_success 0\n"));
        assert!(encode(&run(0)).contains("pgconvoy_last_run_success 1\n"));
    }

    #[test]
    fn the_file_is_replaced_whole_and_no_temp_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgconvoy.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pgconvoy.prom")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // A directory that does not exist: an error, nothing written.
        assert!(write_atomically(&dir.path().join("no/such/m.prom"), "x").is_err());
    }
}
