//! What kilnd counts, for operators to scrape: one process-wide [`Metrics`] ([`global`]), recorded where the
//! work happens (the server's admission helper for every RPC, the unpacker, GC) and encoded in the OpenMetrics
//! text format (Prometheus reads it) by [`Metrics::encode`], which kilnd's metrics listener
//! (`server::metrics`) serves. Names follow Prometheus conventions: `kiln_` prefix, base units (seconds,
//! bytes), `_total` on counters (added by the encoder).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `kiln_rpc_requests_total` | counter | `method` (`Images.Pull`), `code` (`OK`, `NotFound`, …) | finished RPCs, refused ones included |
//! | `kiln_rpc_duration_seconds` | histogram | `method` | from admission to the answer |
//! | `kiln_unpack_layers_total` | counter | `result`: `extracted`, `present` (a chain reused), `joined` (single-flight: waited for another request's extraction) | layers asked for by unpacks |
//! | `kiln_unpack_extracted_bytes_total` | counter | | compressed bytes of the layers extracted |
//! | `kiln_unpack_duration_seconds` | histogram | | one unpack call (all its layers) |
//! | `kiln_gc_removed_total`, `kiln_gc_removed_bytes_total` | counter | `kind`: `snapshot`, `blob` | what GC removed |
//! | `kiln_registry_received_bytes_total` | counter | | blob bytes received from registries (retried bytes count again) |
//! | `kiln_snapshots`, `kiln_bundles`, `kiln_snapshot_bytes` | gauge | | committed snapshots, bundles, bytes of snapshots (set at each scrape) |
//! | `kiln_unpack_failures_total` | counter | | unpack calls that failed, cancelled ones left out |
//! | `kiln_layer_unpack_duration_seconds` | histogram | | one layer's extraction (recorded by `snapshot::apply`; a layer applied again through its parents' mount counts again; during a pull it includes waiting for bytes) |
//! | `kiln_layer_unpacked_bytes_total` | counter | | uncompressed (tar) bytes of the layers extracted |
//! | `kiln_content_bytes` | gauge | | disk bytes under the content store's `blobs/`, set at each scrape from `Kiln::disk_use`: cached, walked again only when a blob was added or removed (the mtimes of `blobs/` and `blobs/<alg>/` moved), at most once per ten times the last walk's duration |
//! | `kiln_root_free_bytes` | gauge | | bytes free for unprivileged use on the root's filesystem (`statvfs`), set at each scrape |
//!
//! [`Metrics::faults`] sums the counters `kiln system info` shows (RPCs that ended `Internal`, `DataLoss`,
//! `ResourceExhausted` by any method; unpack failures; GC removals).
//!
//! May use: nothing else of the crate.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct What {
    kind: &'static str,
}

type HistogramFn = fn() -> Histogram;

/// Every metric kilnd keeps (see the module documentation for names and labels).
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<Rpc, Counter>,
    rpc_seconds: Family<Method, Histogram, HistogramFn>,
    unpack_layers: Family<Outcome, Counter>,
    unpack_bytes: Counter,
    unpack_seconds: Histogram,
    registry_bytes: Counter,
    gc_removed: Family<What, Counter>,
    gc_bytes: Family<What, Counter>,
    snapshots: Gauge,
    snapshot_bytes: Gauge,
    bundles: Gauge,
    content_bytes: Gauge,
    root_free_bytes: Gauge,
    layer_seconds: Histogram,
    layer_bytes: Counter,
    unpack_failures: Counter,
    /// RPCs that ended `Internal`, `DataLoss`, `ResourceExhausted` (by any method): for `kiln system info`,
    /// not registered (`kiln_rpc_requests_total` has them by method).
    rpc_faults: [Counter; 3],
}

/// The gRPC codes [`Faults`] counts, in the order of `Metrics::rpc_faults`.
const FAULT_CODES: [&str; 3] = ["Internal", "DataLoss", "ResourceExhausted"];

/// What went wrong since kilnd started, for `kiln system info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub rpc_internal: u64,
    pub rpc_data_loss: u64,
    pub rpc_resource_exhausted: u64,
    /// Unpacks that failed (other than by cancellation).
    pub unpack_failures: u64,
    pub gc_removed_snapshots: u64,
    pub gc_removed_blobs: u64,
}

/// Latency buckets from 0.25 ms to about 68 s (doubling): a warm create is a millisecond, a cold pull seconds.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency as HistogramFn),
            unpack_layers: Family::default(),
            unpack_bytes: Counter::default(),
            unpack_seconds: latency(),
            registry_bytes: Counter::default(),
            gc_removed: Family::default(),
            gc_bytes: Family::default(),
            snapshots: Gauge::default(),
            snapshot_bytes: Gauge::default(),
            bundles: Gauge::default(),
            content_bytes: Gauge::default(),
            root_free_bytes: Gauge::default(),
            layer_seconds: latency(),
            layer_bytes: Counter::default(),
            unpack_failures: Counter::default(),
            rpc_faults: Default::default(),
            registry: Registry::default(),
        };
        registry.register("kiln_rpc_requests", "Finished RPCs by method and gRPC code", m.rpc_requests.clone());
        registry.register("kiln_rpc_duration_seconds", "RPC time from admission to answer", m.rpc_seconds.clone());
        registry.register("kiln_unpack_layers", "Layers asked for by unpacks, by result", m.unpack_layers.clone());
        registry.register(
            "kiln_unpack_extracted_bytes",
            "Compressed bytes of extracted layers",
            m.unpack_bytes.clone(),
        );
        registry.register("kiln_unpack_duration_seconds", "Time of one unpack call", m.unpack_seconds.clone());
        registry.register(
            "kiln_registry_received_bytes",
            "Blob bytes received from registries",
            m.registry_bytes.clone(),
        );
        registry.register("kiln_gc_removed", "Snapshots and blobs removed by GC", m.gc_removed.clone());
        registry.register("kiln_gc_removed_bytes", "Bytes removed by GC", m.gc_bytes.clone());
        registry.register("kiln_snapshots", "Committed snapshots", m.snapshots.clone());
        registry.register("kiln_snapshot_bytes", "Bytes of all snapshots' own data", m.snapshot_bytes.clone());
        registry.register("kiln_bundles", "Bundles", m.bundles.clone());
        registry.register("kiln_content_bytes", "Disk bytes under the content store's blobs/", m.content_bytes.clone());
        registry.register(
            "kiln_root_free_bytes",
            "Bytes free for unprivileged use on the root's filesystem",
            m.root_free_bytes.clone(),
        );
        registry.register("kiln_layer_unpack_duration_seconds", "Time to extract one layer", m.layer_seconds.clone());
        registry.register("kiln_layer_unpacked_bytes", "Uncompressed bytes of extracted layers", m.layer_bytes.clone());
        registry.register(
            "kiln_unpack_failures",
            "Unpack calls that failed, cancelled ones left out",
            m.unpack_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One finished RPC (`code`: the gRPC code's name, `OK` for success).
    pub fn rpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.rpc_requests.get_or_create(&Rpc { method: method.to_owned(), code: code.to_owned() }).inc();
        self.rpc_seconds.get_or_create(&Method { method: method.to_owned() }).observe(elapsed.as_secs_f64());
        if let Some(i) = FAULT_CODES.iter().position(|c| *c == code) {
            self.rpc_faults[i].inc();
        }
    }

    /// One layer extracted (a layer applied again through its parents' mount counts again): its uncompressed
    /// tar bytes and the time the extraction took.
    pub fn layer_unpacked(&self, uncompressed: u64, elapsed: Duration) {
        self.layer_bytes.inc_by(uncompressed);
        self.layer_seconds.observe(elapsed.as_secs_f64());
    }

    /// An unpack call failed (not counted when it was cancelled).
    pub fn unpack_failed(&self) {
        self.unpack_failures.inc();
    }

    /// One unpack call: layers it extracted, found committed, and waited for; compressed bytes it extracted.
    pub fn unpacked(&self, extracted: u64, present: u64, joined: u64, bytes: u64, elapsed: Duration) {
        for (result, n) in [("extracted", extracted), ("present", present), ("joined", joined)] {
            self.unpack_layers.get_or_create(&Outcome { result }).inc_by(n);
        }
        self.unpack_bytes.inc_by(bytes);
        self.unpack_seconds.observe(elapsed.as_secs_f64());
    }

    /// Blob bytes received from a registry.
    pub fn registry_bytes(&self, n: u64) {
        self.registry_bytes.inc_by(n);
    }

    /// What one collection removed, per kind (`snapshot`, `blob`).
    pub fn gc_removed(&self, kind: &'static str, count: u64, bytes: u64) {
        self.gc_removed.get_or_create(&What { kind }).inc_by(count);
        self.gc_bytes.get_or_create(&What { kind }).inc_by(bytes);
    }

    /// The gauges, set just before a scrape.
    pub fn set_counts(&self, snapshots: u64, snapshot_bytes: u64, bundles: u64) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.snapshots.set(g(snapshots));
        self.snapshot_bytes.set(g(snapshot_bytes));
        self.bundles.set(g(bundles));
    }

    /// The disk-use gauges, set just before a scrape (`None` leaves a gauge as it was).
    pub fn set_disk(&self, content_bytes: Option<u64>, root_free_bytes: Option<u64>) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(v) = content_bytes {
            self.content_bytes.set(g(v));
        }
        if let Some(v) = root_free_bytes {
            self.root_free_bytes.set(g(v));
        }
    }

    /// The fault counters since start.
    pub fn faults(&self) -> Faults {
        let removed = |kind| self.gc_removed.get(&What { kind }).map_or(0, |c| c.get());
        Faults {
            rpc_internal: self.rpc_faults[0].get(),
            rpc_data_loss: self.rpc_faults[1].get(),
            rpc_resource_exhausted: self.rpc_faults[2].get(),
            unpack_failures: self.unpack_failures.get(),
            gc_removed_snapshots: removed("snapshot"),
            gc_removed_blobs: removed("blob"),
        }
    }

    /// Everything, in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded_is_encoded_with_its_labels() {
        let m = Metrics::new();
        m.rpc("Images.Pull", "OK", Duration::from_millis(3));
        m.rpc("Images.Pull", "NotFound", Duration::from_millis(1));
        m.unpacked(2, 1, 0, 4096, Duration::from_millis(20));
        m.gc_removed("blob", 3, 300);
        m.registry_bytes(10);
        m.set_counts(5, 1000, 2);
        m.rpc("Images.Pull", "DataLoss", Duration::from_millis(1));
        m.rpc("System.Gc", "ResourceExhausted", Duration::ZERO);
        m.layer_unpacked(10_000, Duration::from_millis(4));
        m.unpack_failed();
        m.set_disk(Some(8192), None);
        let t = m.encode();
        for line in [
            r#"kiln_rpc_requests_total{method="Images.Pull",code="OK"} 1"#,
            r#"kiln_rpc_requests_total{method="Images.Pull",code="NotFound"} 1"#,
            r#"kiln_rpc_duration_seconds_count{method="Images.Pull"} 3"#,
            r#"kiln_unpack_layers_total{result="extracted"} 2"#,
            r#"kiln_unpack_layers_total{result="present"} 1"#,
            "kiln_unpack_extracted_bytes_total 4096",
            r#"kiln_gc_removed_total{kind="blob"} 3"#,
            "kiln_registry_received_bytes_total 10",
            "kiln_snapshots 5",
            "kiln_bundles 2",
            "kiln_content_bytes 8192",
            "kiln_root_free_bytes 0",
            "kiln_layer_unpack_duration_seconds_count 1",
            "kiln_layer_unpacked_bytes_total 10000",
            "kiln_unpack_failures_total 1",
            "# EOF",
        ] {
            assert!(t.lines().any(|l| l == line), "{line:?} missing from:\n{t}");
        }
        let f = m.faults();
        assert_eq!(
            f,
            Faults {
                rpc_internal: 0,
                rpc_data_loss: 1,
                rpc_resource_exhausted: 1,
                unpack_failures: 1,
                gc_removed_snapshots: 0,
                gc_removed_blobs: 3
            }
        );
    }
}
