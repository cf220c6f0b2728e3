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
        Metrics { registry, ..m }
    }

    /// One finished RPC (`code`: the gRPC code's name, `OK` for success).
    pub fn rpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.rpc_requests.get_or_create(&Rpc { method: method.to_owned(), code: code.to_owned() }).inc();
        self.rpc_seconds.get_or_create(&Method { method: method.to_owned() }).observe(elapsed.as_secs_f64());
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
        let t = m.encode();
        for line in [
            r#"kiln_rpc_requests_total{method="Images.Pull",code="OK"} 1"#,
            r#"kiln_rpc_requests_total{method="Images.Pull",code="NotFound"} 1"#,
            r#"kiln_rpc_duration_seconds_count{method="Images.Pull"} 2"#,
            r#"kiln_unpack_layers_total{result="extracted"} 2"#,
            r#"kiln_unpack_layers_total{result="present"} 1"#,
            "kiln_unpack_extracted_bytes_total 4096",
            r#"kiln_gc_removed_total{kind="blob"} 3"#,
            "kiln_registry_received_bytes_total 10",
            "kiln_snapshots 5",
            "kiln_bundles 2",
            "# EOF",
        ] {
            assert!(t.lines().any(|l| l == line), "{line:?} missing from:\n{t}");
        }
    }
}
