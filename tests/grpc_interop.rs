//! Standard gRPC clients on kilnd's socket, not only tonic: gRPC C-core through Python's grpcio
//! (`tests/interop/grpc_client.py`), which discovers the API through reflection v1 and v1alpha without
//! generated stubs and sends the socket path as `:authority`; a hand-written HTTP/2 request with the
//! authorities C-core, grpc-java and Go send over Unix sockets; and reflection v1alpha from tonic.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::daemon::{path_str, Kilnd};
use serde_json::Value;
use tokio_stream::StreamExt;

const SERVICES: [&str; 6] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "kiln.v1.Bundles",
    "kiln.v1.Images",
    "kiln.v1.System",
];

#[test]
fn python_grpcio_discovers_the_api_by_reflection_and_calls_it() {
    let Some(python) = common::which("python3") else {
        common::skip("python3 is not installed");
        return;
    };
    let k = Kilnd::start(&["--snapshotter", "native"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_client.py");
    let out = Command::new(python).arg(script).arg(&k.socket).output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc_client.py failed ({}):\n{stdout}\n{}\nkilnd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        k.log()
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    if let Some(reason) = v["skip"].as_str() {
        common::skip(reason);
        return;
    }
    println!("grpcio {}", v["grpcio"]);
    for version in ["v1", "v1alpha"] {
        let r = &v[version];
        let services: Vec<&str> = r["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(services, SERVICES, "{version}");
        assert!(r["files"].as_array().unwrap().iter().any(|f| f == "kiln/v1/system.proto"), "{version}: {r}");
        assert_eq!(r["system_methods"], serde_json::json!(["Fsck", "Gc", "Info"]), "{version}");
        let info = &r["info"];
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{version}");
        assert_eq!(info["root"], path_str(&k.root), "{version}");
        assert_eq!(info["state"], path_str(&k.state), "{version}");
        assert_eq!(info["snapshotter"], "native", "{version}");
        assert_eq!(info["snapshots"], 0, "{version}");
        assert_eq!(info["bundles"], 0, "{version}");
        let health = r["health"].as_object().unwrap();
        assert_eq!(health.len(), 4, "{version}: {health:?}");
        assert!(health.values().all(|s| s == "SERVING"), "{version}: {health:?}");
    }
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal, no Huffman coding: a 7-bit-prefix length, then the octets.
fn hpack_string(s: &[u8], out: &mut Vec<u8>) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// Connects to kilnd and sends the client preface and an empty SETTINGS.
fn h2_connect(k: &Kilnd) -> UnixStream {
    let mut s = UnixStream::connect(&k.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&out).unwrap();
    s
}

/// The next frame from kilnd other than SETTINGS (acknowledged), PING, WINDOW_UPDATE: (kind, flags, stream,
/// payload). A GOAWAY fails the test.
fn next_frame(s: &mut UnixStream, k: &Kilnd) -> (u8, u8, u32, Vec<u8>) {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap_or_else(|e| panic!("{e}; kilnd log:\n{}", k.log()));
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).unwrap();
        match head[3] {
            0x4 if head[4] & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
            0x4 | 0x6 | 0x8 => {}
            0x7 => panic!("GOAWAY {payload:?}; kilnd log:\n{}", k.log()),
            kind => return (kind, head[4], stream, payload),
        }
    }
}

/// What a Health.Check of the whole server answers: SERVING (field 1 = 1), one gRPC message.
const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

/// A Health.Check request's header block; `authority` is HPACK bytes for the `:authority` field.
fn health_check_headers(authority: &[u8]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    b.push(0x04); // :path, without indexing
    hpack_string(b"/grpc.health.v1.Health/Check", &mut b);
    b.extend_from_slice(authority);
    for (name, value) in [(&b"content-type"[..], &b"application/grpc"[..]), (b"te", b"trailers")] {
        b.push(0);
        hpack_string(name, &mut b);
        hpack_string(value, &mut b);
    }
    b
}

#[test]
fn unix_socket_authorities_of_standard_clients_are_served() {
    let k = Kilnd::start(&[]);
    let mut s = h2_connect(&k);
    // (stream, :authority as HPACK): C-core's percent-encoded path, added to the dynamic table; the same by
    // its index (62); grpc-java's bare path; Go's `localhost`; and none at all.
    let mut indexed = vec![0x41];
    hpack_string(b"%2Frun%2Fkiln%2Fkilnd.sock", &mut indexed);
    let mut bare = vec![0x01];
    hpack_string(b"/run/kiln/kilnd.sock", &mut bare);
    let mut go = vec![0x01];
    hpack_string(b"localhost", &mut go);
    let requests: [(u32, Vec<u8>); 5] = [(1, indexed), (3, vec![0xbe]), (5, bare), (7, go), (9, vec![])];
    let mut out = Vec::new();
    for (stream, authority) in &requests {
        out.extend(frame(0x1, 0x4, *stream, &health_check_headers(authority)));
        // An empty HealthCheckRequest (the whole server), END_STREAM.
        out.extend(frame(0x0, 0x1, *stream, &[0, 0, 0, 0, 0]));
    }
    s.write_all(&out).unwrap();

    // Every stream must answer SERVING, none be reset.
    let mut answered = Vec::new();
    while answered.len() < requests.len() {
        match next_frame(&mut s, &k) {
            (0x0, _, stream, payload) => {
                assert_eq!(payload, SERVING, "stream {stream}");
                answered.push(stream);
            }
            (0x3, _, stream, code) => panic!("stream {stream} reset (code {code:?}); kilnd log:\n{}", k.log()),
            _ => {}
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 3, 5, 7, 9]);
}

/// With a first authority h2 refuses (the connection's blocks are re-encoded by kilnd's rewriter) and with one
/// it takes (the connection reaches h2 as sent): the same answers either way.
#[test]
fn an_oversized_header_list_is_refused_and_the_connection_goes_on() {
    let k = Kilnd::start(&[]);
    for first in [&b"run%2Fkiln%2Fkilnd.sock"[..], b"localhost"] {
        oversized_on_one_connection(&k, first);
    }
}

fn oversized_on_one_connection(k: &Kilnd, first: &[u8]) {
    let mut s = h2_connect(k);
    let mut authority = vec![0x41];
    hpack_string(first, &mut authority);
    let mut out = frame(0x1, 0x4, 1, &health_check_headers(&authority));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    // 3 KB sent, 60 KB decoded: a 3 KB field added to the dynamic table, then named 20 times by its index.
    let mut bomb = health_check_headers(&[0xbe]);
    bomb.push(0x40);
    hpack_string(b"x-big", &mut bomb);
    hpack_string(&[b'b'; 3000], &mut bomb);
    bomb.extend([0xbe; 20]);
    out.extend(frame(0x1, 0x4 | 0x1, 3, &bomb));
    // The authority is now the second-newest entry (63): both HPACK tables must still agree on it.
    out.extend(frame(0x1, 0x4, 5, &health_check_headers(&[0xbf])));
    out.extend(frame(0x0, 0x1, 5, &[0, 0, 0, 0, 0]));
    s.write_all(&out).unwrap();

    let (mut served, mut refused) = (Vec::new(), false);
    while served.len() < 2 || !refused {
        match next_frame(&mut s, k) {
            (0x0, _, stream, payload) => {
                assert_ne!(stream, 3, "the oversized request was served");
                assert_eq!(payload, SERVING, "stream {stream}");
                served.push(stream);
            }
            // h2 answers 431 (a HEADERS frame that ends the stream) and resets the stream REFUSED_STREAM.
            (0x1, flags, 3, _) if flags & 0x1 != 0 => refused = true,
            (0x3, _, 3, code) => {
                assert_eq!(code, [0, 0, 0, 7]);
                refused = true;
            }
            (0x3, _, stream, code) => panic!("stream {stream} reset (code {code:?}); kilnd log:\n{}", k.log()),
            _ => {}
        }
    }
    served.sort_unstable();
    assert_eq!(served, [1, 5], "first authority {:?}", String::from_utf8_lossy(first));
}

#[test]
fn tonic_reflection_v1alpha_lists_every_service() {
    let k = Kilnd::start(&[]);
    let addr = k.address();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let ch = kiln::client::connect(&addr).await.unwrap();
        let mut refl = ServerReflectionClient::new(ch);
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol("kiln.v1.System".into())),
            },
        ];
        let mut resp = refl.server_reflection_info(tokio_stream::iter(reqs)).await.unwrap().into_inner();
        let msg = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, SERVICES);
        let msg = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = msg.message_response else { panic!("{msg:?}") };
        assert_eq!(files.file_descriptor_proto.len(), 1);
        // The serialized FileDescriptorProto names its file (field 1).
        let fd = &files.file_descriptor_proto[0];
        assert!(fd.windows(20).any(|w| w == b"kiln/v1/system.proto"), "{fd:?}");
    });
}
