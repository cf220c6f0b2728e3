//! Issue 10: no caller can stall, fill or fool kilnd. A real kilnd is attacked over its Unix socket — streams
//! that are never read (a raw HTTP/2 client advertising a zero window), tens of thousands of header-only
//! streams on one connection, thousands of connections — while another client checks that System.Info,
//! Bundles.List, Images.List, Bundles.Create, Images.Import and System.Gc still answer, and that the daemon's
//! threads, descriptors and memory stay bounded. Every load is bounded in count and time. Latency bounds are
//! generous (each call within seconds, not the 100 ms the issue aims at) so that a loaded 2-core machine does
//! not fail them; the measured numbers are printed.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::daemon::{path_str, Kilnd, Usage};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;
use kiln::api::v1::images_client::ImagesClient;
use kiln::api::v1::system_client::SystemClient;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// How long any one call may take while an attack runs before the test fails: far above what it takes
/// (milliseconds), far below "stalled".
const PROMPT: Duration = Duration::from_secs(2);
/// The same for calls that do real work (an unpack, an import, a collection).
const WORK: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// An image of `n` tiny layers: each unpack or import reports progress more than `n` times, far more than any
/// stream buffer holds.
fn many_layers(n: usize) -> tempfile::TempDir {
    let layers = (0..n)
        .map(|i| LayerBuilder::new().dir("d", 0o755).file(&format!("d/f{i}"), b"x", 0o644).layer(Compression::Gzip))
        .collect();
    let spec = ImageSpec { layers, config: json!({"Cmd": ["/d/f0"]}), ..Default::default() };
    let tmp = common::scratch();
    single_image(tmp.path(), &spec, "many");
    tmp
}

async fn import(ch: &Channel, source: &str, name: &str) -> Result<String, tonic::Status> {
    let mut c = ImagesClient::new(ch.clone());
    let req = pb::ImportImageRequest {
        source: source.into(),
        source_reference: String::new(),
        ref_name: name.into(),
        source_fd: false,
    };
    let mut s = c.import(req).await?.into_inner();
    while let Some(m) = s.next().await {
        let m = m?;
        if m.done {
            return Ok(m.digest);
        }
    }
    Err(tonic::Status::internal("import stream ended without done"))
}

async fn pull(ch: &Channel, reference: &str) -> Result<String, tonic::Status> {
    let mut c = ImagesClient::new(ch.clone());
    let mut s = c
        .pull(pb::PullImageRequest { reference: reference.into(), platform: None, no_unpack: false, credentials: None })
        .await?
        .into_inner();
    while let Some(m) = s.next().await {
        let m = m?;
        if m.done {
            return Ok(m.chain_id);
        }
    }
    Err(tonic::Status::internal("pull stream ended without done"))
}

/// Runs `f`, failing the test if it does not answer within `bound`; returns its value and how long it took.
async fn timed<T>(what: &str, bound: Duration, f: impl Future<Output = Result<T, tonic::Status>>) -> (T, Duration) {
    let start = Instant::now();
    match tokio::time::timeout(bound, f).await {
        Ok(Ok(v)) => (v, start.elapsed()),
        Ok(Err(e)) => panic!("{what}: {e:?}"),
        Err(_) => panic!("{what} did not answer within {bound:?}"),
    }
}

/// Median and maximum.
struct Latency {
    p50: Duration,
    max: Duration,
    n: usize,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {:.2} ms, max {:.2} ms (n={})", ms(self.p50), ms(self.max), self.n)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n` System.Info calls one after the other on `ch`, each within [`PROMPT`].
async fn info_latency(ch: &Channel, n: usize) -> Latency {
    let mut system = SystemClient::new(ch.clone());
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let (_, d) = timed("System.Info", PROMPT, system.info(pb::InfoRequest {})).await;
        all.push(d);
    }
    all.sort();
    Latency { p50: all[all.len() / 2], max: all[all.len() - 1], n }
}

fn report(attack: &str, before: Usage, during: Usage, info: &Latency) {
    println!("[{attack}] kilnd before: {before}");
    println!("[{attack}] kilnd during: {during}");
    println!("[{attack}] System.Info latency during the attack: {info}");
}

/// A gRPC message frame: no compression, big-endian length, the encoded message.
fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// An HTTP/2 client whose streams have a zero receive window and are never read: kilnd can send it headers
/// but no message. Its connection task runs (it answers PINGs and SETTINGS), so keepalive does not end it.
struct Stalled {
    send: h2::client::SendRequest<Bytes>,
    conn: tokio::task::JoinHandle<()>,
    responses: Vec<h2::client::ResponseFuture>,
}

impl Stalled {
    async fn connect(socket: &Path) -> Stalled {
        let io = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (send, conn) = h2::client::Builder::new().initial_window_size(0).handshake(io).await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Stalled { send, conn, responses: Vec::new() }
    }

    /// Opens a call of `path` with `msg` as its request, and never reads the response.
    async fn call(&mut self, path: &str, msg: &impl prost::Message) {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://kilnd{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut send = self.send.clone().ready().await.unwrap();
        let (resp, mut body) = send.send_request(req, false).unwrap();
        body.send_data(grpc_frame(msg), true).unwrap();
        self.responses.push(resp);
    }
}

/// A `[limits]` section with short timeouts and small bounds, `set` overriding any field (`"concurrent.read"`
/// for the per-kind ones).
fn limits_config(set: &[(&str, &str)]) -> String {
    let mut limits =
        vec![("idle_timeout_secs", "3"), ("keepalive_interval_secs", "1"), ("keepalive_timeout_secs", "5")];
    let mut concurrent =
        vec![("create", "8"), ("delete", "8"), ("pull", "8"), ("import", "4"), ("gc", "1"), ("read", "8")];
    for (k, v) in set {
        let (table, key) = match k.strip_prefix("concurrent.") {
            Some(key) => (&mut concurrent, key),
            None => (&mut limits, *k),
        };
        table.retain(|(n, _)| *n != key);
        table.push((key, v));
    }
    let lines = |t: &[(&str, &str)]| t.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>();
    format!("[limits]\n{}[limits.concurrent]\n{}", lines(&limits), lines(&concurrent))
}

/// Item 1 and 2 of the issue: a client opens Images.Pull and Images.Import streams and never reads them.
/// Before, the unpack blocked on a full progress channel holding the GC lock (and leading the single flight),
/// the import blocked holding the index lock, and every Create, Pull, Import and Gc after them hung.
#[test]
fn unread_pull_and_import_streams_stall_nobody() {
    let k = Kilnd::start_with_config(&limits_config(&[]), &[]);
    let image = many_layers(40);
    let other = many_layers(3);
    let source = path_str(image.path()).to_owned();
    let addr = k.address();
    let socket = k.socket.clone();
    let root = nix::unistd::geteuid().is_root();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        import(&ch, &source, "many:1").await.unwrap();
        let before = k.usage();

        let mut attacker = Stalled::connect(&socket).await;
        for _ in 0..3 {
            attacker
                .call(
                    "/kiln.v1.Images/Pull",
                    &pb::PullImageRequest {
                        reference: "many:1".into(),
                        platform: None,
                        no_unpack: false,
                        credentials: None,
                    },
                )
                .await;
        }
        for i in 0..3 {
            let req = pb::ImportImageRequest {
                source: source.clone(),
                source_reference: String::new(),
                ref_name: format!("stalled-{i}"),
                source_fd: false,
            };
            attacker.call("/kiln.v1.Images/Import", &req).await;
        }

        // Another client, on its own connection.
        let ch = kiln::client::connect(&addr).await.unwrap();
        let info = info_latency(&ch, 50).await;
        let (_, list_b) =
            timed("Bundles.List", PROMPT, BundlesClient::new(ch.clone()).list(pb::ListBundlesRequest {})).await;
        let (_, list_i) =
            timed("Images.List", PROMPT, ImagesClient::new(ch.clone()).list(pb::ListImagesRequest {})).await;
        let (_, pull_t) = timed("Images.Pull", WORK, pull(&ch, "many:1")).await;
        let (_, import_t) = timed("Images.Import", WORK, import(&ch, path_str(other.path()), "other:1")).await;
        let mut create_t = None;
        if root {
            let req = pb::CreateBundleRequest { id: "b1".into(), image: "many:1".into(), ..Default::default() };
            let (_, t) = timed("Bundles.Create", WORK, BundlesClient::new(ch.clone()).create(req)).await;
            create_t = Some(t);
        } else {
            common::skip("Bundles.Create under the attack needs root (mounts)");
        }
        let (gc, gc_t) =
            timed("System.Gc", WORK, SystemClient::new(ch.clone()).gc(pb::GcRequest { dry_run: false })).await;
        let during = k.usage();
        report("unread Pull+Import streams", before, during, &info);
        println!(
            "[unread Pull+Import streams] Bundles.List {:.2} ms, Images.List {:.2} ms, Pull {:.1} ms, Import {:.1} ms, \
             Create {}, Gc {:.1} ms",
            ms(list_b),
            ms(list_i),
            ms(pull_t),
            ms(import_t),
            create_t.map_or("skipped".into(), |t| format!("{:.1} ms", ms(t))),
            ms(gc_t),
        );
        // The stalled imports' blobs are named by stalled-N by now or were pinned while they ran: nothing of
        // the attacked image was collected.
        let gc = gc.into_inner();
        assert!(gc.removed.iter().all(|i| i.kind != "snapshot"), "{:?}", gc.removed);
        let names: Vec<String> = ImagesClient::new(ch.clone())
            .list(pb::ListImagesRequest {})
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .map(|i| i.ref_name)
            .collect();
        for i in 0..3 {
            assert!(names.contains(&format!("stalled-{i}")), "the unread imports still finished: {names:?}");
        }
        assert!(during.threads <= 100, "threads bounded: {during}");
        assert!(during.fds <= 100, "descriptors bounded: {during}");

        // The attacker's work is done, its streams are unread: its connection counts as idle and is closed.
        let closed = tokio::time::timeout(WORK, &mut attacker.conn).await;
        assert!(closed.is_ok(), "a connection whose only streams are unread finished calls is closed when idle");
        println!("[unread Pull+Import streams] the attacker's connection was closed by the idle timeout");
        info_latency(&ch, 5).await;
        if root {
            BundlesClient::new(ch.clone())
                .delete(pb::DeleteBundleRequest { id: "b1".into(), force: false })
                .await
                .unwrap();
        }
    });
}

/// HPACK for one header, as a literal without indexing and without Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    for s in [name, value] {
        assert!(s.len() < 127);
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What kilnd sent back on a raw connection.
#[derive(Debug, Default)]
struct Seen {
    refused: u64,
    headers: u64,
    goaway: Option<u32>,
    bytes: u64,
}

/// Reads frames until EOF or an error, counting RST_STREAM(REFUSED_STREAM), HEADERS and GOAWAY.
fn read_frames(mut s: UnixStream) -> Seen {
    let mut seen = Seen::default();
    let mut head = [0u8; 9];
    loop {
        if s.read_exact(&mut head).is_err() {
            return seen;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            return seen;
        }
        seen.bytes += 9 + len as u64;
        match head[3] {
            0x1 => seen.headers += 1,
            0x3 if payload.len() >= 4
                && u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) == 0x7 =>
            {
                seen.refused += 1
            }
            0x7 if payload.len() >= 8 => {
                seen.goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]))
            }
            _ => {}
        }
    }
}

/// Opens a raw HTTP/2 connection and sends `streams` HEADERS frames of System.Info calls that never end
/// (END_HEADERS without END_STREAM, no message). Returns the writer (how many were sent) and the reader (what
/// kilnd sent back, until it closed the connection).
fn flood_headers(socket: &Path, streams: u32) -> (std::thread::JoinHandle<u32>, std::thread::JoinHandle<Seen>) {
    let s = UnixStream::connect(socket).unwrap();
    let reader = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || read_frames(s))
    };
    let writer = std::thread::spawn(move || {
        let mut s = s;
        let mut block = Vec::new();
        for (n, v) in [(":method", "POST"), (":scheme", "http"), (":path", "/kiln.v1.System/Info")] {
            hpack_literal(&mut block, n, v);
        }
        hpack_literal(&mut block, ":authority", "kilnd");
        hpack_literal(&mut block, "content-type", "application/grpc");
        hpack_literal(&mut block, "te", "trailers");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        let mut sent = 0u32;
        for i in 0..streams {
            out.extend(frame(0x1, 0x4, 2 * i + 1, &block));
            if out.len() > 64 << 10 {
                if s.write_all(&out).is_err() {
                    return sent;
                }
                out.clear();
            }
            sent = i + 1;
        }
        let _ = s.write_all(&out);
        sent
    });
    (writer, reader)
}

/// Item 6: 50 000 header-only streams on one connection (HEADERS without END_STREAM, no message ever sent).
/// kilnd accepts `max_streams_per_connection` of them and refuses the rest (RST_STREAM REFUSED_STREAM); as no
/// request on the connection ever gets going, the idle timeout closes it. Memory stays where it was.
#[test]
fn header_only_streams_on_one_connection_are_capped() {
    const STREAMS: u32 = 50_000;
    let k = Kilnd::start_with_config(&limits_config(&[("max_streams_per_connection", "32")]), &[]);
    let addr = k.address();
    let socket = k.socket.clone();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        info_latency(&ch, 5).await;
        let before = k.usage();

        let (writer, reader) = flood_headers(&socket, STREAMS);
        let started = Instant::now();
        let info = info_latency(&ch, 50).await;
        let during = k.usage();
        let sent = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
        // The reader ends when kilnd closes the connection; a bounded wait, so that a regression fails.
        let seen = tokio::time::timeout(WORK, tokio::task::spawn_blocking(move || reader.join().unwrap()))
            .await
            .expect("kilnd closes the connection")
            .unwrap();
        let lasted = started.elapsed();
        let after = k.usage();
        report("50 000 header-only streams on one connection", before, during, &info);
        println!(
            "[50 000 header-only streams] sent {sent} HEADERS; kilnd refused {} streams, answered {}, GOAWAY {:?}; \
             connection closed by kilnd after {:.1} s; after: {after}",
            seen.refused,
            seen.headers,
            seen.goaway,
            lasted.as_secs_f64()
        );
        assert_eq!(sent, STREAMS);
        assert!(seen.refused >= u64::from(STREAMS) - 32, "streams over the cap are refused: {seen:?}");
        let grown = after.rss_kib.saturating_sub(before.rss_kib);
        assert!(grown < 64 << 10, "RSS grew by {grown} KiB");
        info_latency(&ch, 5).await;
    });
}

/// Item 6, the most a caller can hold: `max_connections` connections, each with `max_streams_per_connection`
/// header-only streams kilnd accepted and waits on (the defaults: 128 × 32 = 4 096 open requests). Memory stays
/// bounded, System.Info answers, and the idle timeout ends them all.
#[test]
fn the_most_streams_a_caller_can_hold() {
    const CONNECTIONS: usize = 128;
    let k = Kilnd::start_with_config(
        &limits_config(&[("max_connections", "129"), ("max_streams_per_connection", "32")]),
        &[],
    );
    let addr = k.address();
    let socket = k.socket.clone();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        info_latency(&ch, 5).await;
        let before = k.usage();
        let floods: Vec<_> = (0..CONNECTIONS).map(|_| flood_headers(&socket, 100)).collect();
        let info = info_latency(&ch, 50).await;
        let during = k.usage();
        report("128 connections x 32 header-only streams", before, during, &info);
        let mut refused = 0;
        for (writer, reader) in floods {
            let sent = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
            assert_eq!(sent, 100);
            let seen = tokio::time::timeout(WORK, tokio::task::spawn_blocking(move || reader.join().unwrap()))
                .await
                .expect("kilnd closes every idle connection")
                .unwrap();
            refused += seen.refused;
        }
        let after = k.usage();
        println!("[128 connections x 32 header-only streams] {refused} streams refused; after: {after}");
        assert_eq!(refused, CONNECTIONS as u64 * (100 - 32));
        let grown = during.rss_kib.saturating_sub(before.rss_kib);
        assert!(grown < 128 << 10, "RSS grew by {grown} KiB");
        info_latency(&ch, 5).await;
    });
}

/// Item 6: 2 000 connections. kilnd keeps `max_connections`, closes the rest as soon as they are accepted, closes
/// idle ones after the idle timeout, and neither spins nor runs out of descriptors; a client connected before
/// the flood keeps being served.
#[test]
fn connections_are_capped() {
    const CONNECTIONS: usize = 2000;
    const MAX: u64 = 64;
    if !descriptors_for(CONNECTIONS as u64 + 512) {
        return;
    }
    let k = Kilnd::start_with_config(&limits_config(&[("max_connections", "64"), ("idle_timeout_secs", "5")]), &[]);
    let addr = k.address();
    let socket = k.socket.clone();
    let pid = k.pid();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        info_latency(&ch, 5).await;
        let before = k.usage();
        // Keeps the early client's connection busy, so its idle timeout never fires during the test.
        let busy = {
            let ch = ch.clone();
            tokio::spawn(async move {
                let mut system = SystemClient::new(ch);
                loop {
                    let _ = system.info(pb::InfoRequest {}).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };

        let flood_start = Instant::now();
        let conns = tokio::task::spawn_blocking(move || {
            (0..CONNECTIONS).map(|_| UnixStream::connect(&socket).unwrap()).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let flood = flood_start.elapsed();
        let info = info_latency(&ch, 50).await;
        let cpu_before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu = cpu_ticks(pid).saturating_sub(cpu_before) as f64 / clock_ticks();
        let during = k.usage();
        report("2 000 connections", before, during, &info);
        println!(
            "[2 000 connections] opened in {:.0} ms; kilnd CPU {:.0}% over 1 s while held",
            ms(flood),
            cpu * 100.0
        );
        assert!(during.fds <= before.fds + MAX + 16, "descriptors bounded by max_connections: {during}");
        assert!(cpu < 0.5, "kilnd is not spinning: {:.0}% CPU", cpu * 100.0);

        // Every flood connection ends: over the cap at once (GOAWAY, EOF), the rest after the idle timeout.
        let (refused, closed) = tokio::task::spawn_blocking(move || {
            let mut refused = 0;
            let mut closed = 0;
            let deadline = Instant::now() + WORK;
            for mut c in conns {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                c.set_read_timeout(Some(left)).unwrap();
                let mut buf = Vec::new();
                let r = c.read_to_end(&mut buf);
                if buf.windows(5).any(|w| w == b"kilnd") {
                    refused += 1;
                }
                if r.is_ok() || r.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) {
                    closed += 1;
                }
            }
            (refused, closed)
        })
        .await
        .unwrap();
        let after = k.usage();
        println!("[2 000 connections] refused at once: {refused}; closed in the end: {closed}; after: {after}");
        assert_eq!(closed, CONNECTIONS, "every flood connection was closed by kilnd");
        assert!(refused as u64 >= CONNECTIONS as u64 - MAX, "{refused} refused with a reason");
        busy.abort();
        // New clients are served again.
        let fresh = kiln::client::connect(&addr).await.unwrap();
        info_latency(&fresh, 5).await;
    });
}

/// Connections beyond the daemon's descriptor limit (lowered to 64 with `prlimit` while it runs, under a
/// `max_connections` of 1 000): accept fails with EMFILE, and kilnd pauses accepting instead of spinning on the
/// ready listener; once the flood is gone it serves again.
#[test]
fn accepts_over_the_descriptor_limit_do_not_spin() {
    if !common::require_tool("prlimit") {
        return;
    }
    const CONNECTIONS: usize = 300;
    let k = Kilnd::start_with_config(&limits_config(&[("max_connections", "1000")]), &[]);
    let addr = k.address();
    let socket = k.socket.clone();
    let pid = k.pid();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        info_latency(&ch, 5).await;
        let before = k.usage();
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), "--nofile=64:64"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit --nofile on kilnd");
        let conns = tokio::task::spawn_blocking(move || {
            (0..CONNECTIONS).filter_map(|_| UnixStream::connect(&socket).ok()).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu_before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu = cpu_ticks(pid).saturating_sub(cpu_before) as f64 / clock_ticks() / 2.0;
        let during = k.usage();
        println!(
            "[EMFILE] {} connections against 64 descriptors; kilnd before: {before}; during: {during}; CPU {:.0}% \
             over 2 s",
            conns.len(),
            cpu * 100.0
        );
        assert!(cpu < 0.5, "kilnd is not spinning on accept: {:.0}% CPU", cpu * 100.0);
        drop(conns);
        // Served again once the flood is gone (the backlog drains first).
        let deadline = Instant::now() + WORK;
        loop {
            let r = async {
                let ch = kiln::client::connect(&addr).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                SystemClient::new(ch).info(pb::InfoRequest {}).await
            };
            match tokio::time::timeout(PROMPT, r).await {
                Ok(Ok(_)) => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("kilnd does not serve again after the flood: {other:?}"),
            }
        }
        assert!(k.log().contains("pausing accepts"), "the pause is logged");
    });
}

/// Raises this process's soft descriptor limit to the hard one; false (after a SKIPPED) when that is below `n`.
fn descriptors_for(n: u64) -> bool {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < n && hard >= n {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    if hard < n {
        common::skip(&format!("needs {n} open files (RLIMIT_NOFILE hard limit is {hard})"));
        return false;
    }
    true
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let get = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// Bundles.Create with deadlines that pass while the bundle is made. A create whose caller is gone by the time
/// the bundle is made takes it down again; nothing is ever left half-built (a directory, a mount or a snapshot
/// without a record); every create that answered left its whole bundle. (A caller whose own timer fires while
/// the answer is already on its way may still miss a finished bundle: those are counted, not failed on.)
#[test]
fn a_create_whose_deadline_passed_leaves_nothing_half_built() {
    if !common::require_root() {
        return;
    }
    let k = Kilnd::start_with_config(&limits_config(&[]), &[]);
    let image = many_layers(5);
    let source = path_str(image.path()).to_owned();
    let addr = k.address();
    let bundles_dir = k.state.join("bundles");
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        import(&ch, &source, "small:1").await.unwrap();
        let mut bundles = BundlesClient::new(ch.clone());
        let mut answered = Vec::new();
        let (mut late, mut full) = (0, 0);
        for i in 0..30u64 {
            let id = format!("d{i}");
            let mut req = tonic::Request::new(pb::CreateBundleRequest {
                id: id.clone(),
                image: "small:1".into(),
                ..Default::default()
            });
            // From already passed (the first is cold: it unpacks) to comfortably long.
            req.set_timeout(Duration::from_micros(1 + i * i * 100));
            match bundles.create(req).await {
                Ok(_) => answered.push(id),
                Err(e) if matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled) => late += 1,
                // Creates whose callers left hold their slot until their work ends (they may be waiting on the
                // first one's unpack): the next ones may find the kind full.
                Err(e) if e.code() == Code::ResourceExhausted => full += 1,
                Err(e) => panic!("{id}: {e:?}"),
            }
        }
        // Work still running for callers that left ends (taking its bundle down); wait until the list settles.
        let deadline = Instant::now() + WORK;
        let mut last: Option<(Vec<String>, Instant)> = None;
        let listed = loop {
            let mut listed: Vec<String> = bundles
                .list(pb::ListBundlesRequest {})
                .await
                .unwrap()
                .into_inner()
                .bundles
                .into_iter()
                .map(|b| b.id)
                .collect();
            listed.sort();
            match &last {
                Some((l, since)) if *l == listed && since.elapsed() >= Duration::from_secs(1) => break listed,
                Some((l, _)) if *l == listed => {}
                _ => last = Some((listed.clone(), Instant::now())),
            }
            assert!(Instant::now() < deadline, "bundles never settled: {listed:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let orphans: Vec<&String> = listed.iter().filter(|id| !answered.contains(id)).collect();
        println!(
            "[deadlines] 30 creates: {} answered, {late} out of time, {full} found the kind full; {} bundles left, \
             {} of them for a caller that had given up",
            answered.len(),
            listed.len(),
            orphans.len()
        );
        for id in &answered {
            assert!(listed.contains(id), "{id} answered, so it exists: {listed:?}");
        }
        let mut dirs: Vec<String> =
            std::fs::read_dir(&bundles_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        dirs.sort();
        assert_eq!(dirs, listed, "a directory per recorded bundle, and no other");
        for id in &listed {
            let dir = bundles_dir.join(id);
            assert!(dir.join("config.json").is_file(), "{id} is whole");
            assert!(kiln::sys::mount::is_mount_point(&dir.join("rootfs")), "{id}'s rootfs is mounted");
        }
        for id in listed {
            bundles.delete(pb::DeleteBundleRequest { id, force: false }).await.unwrap();
        }
        // Every slot came back.
        let req = pb::CreateBundleRequest { id: "last".into(), image: "small:1".into(), ..Default::default() };
        timed("Bundles.Create", WORK, bundles.create(req)).await;
        bundles.delete(pb::DeleteBundleRequest { id: "last".into(), force: false }).await.unwrap();
    });
}

/// A kind over its bound answers RESOURCE_EXHAUSTED at once; no call waits in a queue.
#[test]
fn over_the_bound_is_resource_exhausted_at_once() {
    let k = Kilnd::start_with_config(&limits_config(&[("concurrent.read", "1")]), &[]);
    let addr = k.address();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let mut s = SystemClient::new(ch.clone());
                tokio::spawn(async move {
                    let start = Instant::now();
                    (s.info(pb::InfoRequest {}).await.map(|_| ()), start.elapsed())
                })
            })
            .collect();
        let (mut ok, mut exhausted, mut slowest) = (0, 0, Duration::ZERO);
        for c in calls {
            let (r, t) = c.await.unwrap();
            slowest = slowest.max(t);
            match r {
                Ok(()) => ok += 1,
                Err(e) if e.code() == Code::ResourceExhausted => {
                    assert!(e.message().contains("limits.concurrent.read"), "{e:?}");
                    exhausted += 1
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        println!(
            "[read = 1] 64 concurrent System.Info: {ok} answered, {exhausted} RESOURCE_EXHAUSTED, slowest {:.1} ms",
            ms(slowest)
        );
        assert!(ok >= 1);
        assert!(slowest < PROMPT, "nobody queued");
    });
}

/// Item "a request whose client is gone is cancelled": a caller reads the first progress of a Pull of many
/// layers and then resets its stream. The unpack stops before its next layer: some layers are committed, the
/// image is not unpacked, no snapshot is left that is not a committed layer, and the Pull slot is free again.
/// A later Pull reuses what was committed and finishes the rest.
#[test]
fn a_pull_whose_caller_leaves_stops_between_layers() {
    const LAYERS: usize = 250;
    let k = Kilnd::start_with_config(&limits_config(&[("concurrent.pull", "1")]), &[]);
    let image = many_layers(LAYERS);
    let source = path_str(image.path()).to_owned();
    let addr = k.address();
    let snapshots = k.root.join("snapshots");
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        import(&ch, &source, "many:1").await.unwrap();
        let mut images = ImagesClient::new(ch.clone());
        let started = Instant::now();
        let mut s = images
            .pull(pb::PullImageRequest {
                reference: "many:1".into(),
                platform: None,
                no_unpack: false,
                credentials: None,
            })
            .await
            .unwrap()
            .into_inner();
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(first.layers_total as usize, LAYERS);
        drop(s);
        // The slot (concurrent.pull = 1) comes back once the unpack has stopped.
        let get = |mut c: ImagesClient<Channel>| async move {
            c.get(pb::GetImageRequest { reference: "many:1".into(), platform: None, verify: false })
                .await
                .unwrap()
                .into_inner()
        };
        let deadline = Instant::now() + WORK;
        let stopped = loop {
            let mut c = ImagesClient::new(ch.clone());
            let mut probe = c
                .pull(pb::PullImageRequest {
                    reference: "nothing-by-this-name:1".into(),
                    platform: None,
                    no_unpack: false,
                    credentials: None,
                })
                .await;
            if let Ok(s) = probe.as_mut() {
                // Admitted: the slot is free. (The probe itself fails: no such image.)
                let r = s.get_mut().next().await;
                assert!(matches!(r, Some(Err(ref e)) if e.code() == Code::NotFound), "{r:?}");
                break started.elapsed();
            }
            let e = probe.unwrap_err();
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert!(Instant::now() < deadline, "the cancelled pull never gave its slot back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let img = get(images.clone()).await;
        let committed = img.layers.iter().filter(|l| l.unpacked).count();
        let on_disk = std::fs::read_dir(&snapshots).unwrap().count();
        println!(
            "[cancelled pull] stopped {:.0} ms after it started: {committed} of {LAYERS} layers committed, \
             {on_disk} snapshot dirs",
            ms(stopped)
        );
        assert!(!img.unpacked, "the unpack stopped before its end");
        assert!(committed < LAYERS);
        // Committed layers are a bottom-up prefix (each is committed onto the one below), and nothing else is on
        // disk: no active snapshot of a layer that was being extracted.
        assert!(img.layers.iter().take(committed).all(|l| l.unpacked), "committed layers are a prefix");
        assert_eq!(on_disk, committed, "only committed snapshots stay");
        let (chain, _) = timed("Images.Pull", WORK, pull(&ch, "many:1")).await;
        let img = get(images).await;
        assert!(img.unpacked);
        assert_eq!(chain, img.chain_id);
    });
}

/// The other half: a Pull that another request waits on runs to its end even when its own caller leaves.
#[test]
fn a_pull_another_request_waits_on_finishes_when_its_caller_leaves() {
    const LAYERS: usize = 250;
    let k = Kilnd::start_with_config(&limits_config(&[]), &[]);
    let image = many_layers(LAYERS);
    let source = path_str(image.path()).to_owned();
    let addr = k.address();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        import(&ch, &source, "many:1").await.unwrap();
        let mut leader = ImagesClient::new(ch.clone())
            .pull(pb::PullImageRequest {
                reference: "many:1".into(),
                platform: None,
                no_unpack: false,
                credentials: None,
            })
            .await
            .unwrap()
            .into_inner();
        leader.next().await.unwrap().unwrap();
        // The follower's first message comes after it claimed its layers (the leader's flights).
        let mut follower = ImagesClient::new(ch.clone())
            .pull(pb::PullImageRequest {
                reference: "many:1".into(),
                platform: None,
                no_unpack: false,
                credentials: None,
            })
            .await
            .unwrap()
            .into_inner();
        follower.next().await.unwrap().unwrap();
        drop(leader);
        let done = timed("the follower's Pull", WORK, async {
            while let Some(m) = follower.next().await {
                if m?.done {
                    return Ok(());
                }
            }
            Err(tonic::Status::internal("no done"))
        })
        .await;
        println!("[pull with a follower] the follower finished {:.0} ms after the leader left", ms(done.1));
    });
}

/// Item "a request whose client is gone is cancelled", for Images.Import: the first progress message already
/// has the totals (from the manifests); the caller then resets its stream. The import stops before its next
/// blob: no ref names the image, nothing is left in the root's tmp/, the Import slot is free again, and an
/// import of the same source afterwards completes.
#[test]
fn an_import_whose_caller_leaves_stops_before_its_next_blob() {
    const LAYERS: usize = 250;
    let k = Kilnd::start_with_config(&limits_config(&[("concurrent.import", "1")]), &[]);
    let image = many_layers(LAYERS);
    let source = path_str(image.path()).to_owned();
    let addr = k.address();
    let blobs_dir = k.content().join("blobs/sha256");
    let tmp_dir = k.root.join("tmp");
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        let req = pb::ImportImageRequest {
            source: source.clone(),
            source_reference: String::new(),
            ref_name: "gone:1".into(),
            source_fd: false,
        };
        let mut s = ImagesClient::new(ch.clone()).import(req).await.unwrap().into_inner();
        let first = s.next().await.unwrap().unwrap();
        // Layers, config and manifest, known before the first blob is copied.
        assert_eq!(first.blobs_total as usize, LAYERS + 2, "{first:?}");
        assert!(first.bytes_total > 0 && first.blobs_done < first.blobs_total, "{first:?}");
        drop(s);
        let deadline = Instant::now() + WORK;
        loop {
            // The slot (concurrent.import = 1) is free once the import has stopped.
            let probe = pb::ImportImageRequest {
                source: "/nonexistent-import-probe".into(),
                source_reference: String::new(),
                ref_name: "probe:1".into(),
                source_fd: false,
            };
            match import(&ch, &probe.source, &probe.ref_name).await {
                Err(e) if e.code() == Code::ResourceExhausted => {}
                Err(e) if e.code() == Code::NotFound => break,
                other => panic!("{other:?}"),
            }
            assert!(Instant::now() < deadline, "the cancelled import never gave its slot back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let names: Vec<String> = ImagesClient::new(ch.clone())
            .list(pb::ListImagesRequest {})
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .map(|i| i.ref_name)
            .collect();
        assert!(!names.contains(&"gone:1".to_string()), "a cancelled import names nothing: {names:?}");
        let copied = std::fs::read_dir(&blobs_dir).map(|d| d.count()).unwrap_or(0);
        let left: Vec<_> = std::fs::read_dir(&tmp_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        println!("[cancelled import] {copied} of {} blobs copied before it stopped; tmp/ holds {left:?}", LAYERS + 2);
        assert!(copied < LAYERS + 2, "it stopped before the end");
        assert!(left.is_empty(), "nothing half-written in tmp/: {left:?}");
        timed("Images.Import", WORK, import(&ch, &source, "gone:1")).await;
    });
}
