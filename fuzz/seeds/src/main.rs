//! Seed corpora for kiln's fuzz targets, written in code: `kiln-fuzz-seeds DIR` fills `DIR/<target>/` with a
//! few dozen well-formed and edge-case inputs per target (tar headers of every kind, PAX, GNU long names and
//! sparse maps, whiteouts, hostile names and links, oci-/docker-archives, JSON documents valid and
//! near-invalid, passwd/group files, reference strings). Deterministic: the same files every run.

// A build tool writing its own output directory by path, like the tests' fixtures.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

// ---- tar ----------------------------------------------------------------------------------------------------

const GNU_MAGIC: &[u8; 8] = b"ustar  \0";

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(&s.as_bytes()[s.len() - field.len()..]);
}

fn base256(field: &mut [u8], v: u64) {
    field.fill(0);
    field[0] = 0x80;
    let n = field.len();
    field[n - 8..].copy_from_slice(&v.to_be_bytes());
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

#[derive(Clone)]
struct H {
    name: Vec<u8>,
    typ: u8,
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: Vec<u8>,
    dev: (u64, u64),
    gnu: bool,
    prefix: Vec<u8>,
}

fn h(name: &str, typ: u8, size: u64) -> H {
    H {
        name: name.as_bytes().to_vec(),
        typ,
        mode: if typ == b'5' { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        size,
        mtime: 1_700_000_000,
        link: Vec::new(),
        dev: (0, 0),
        gnu: false,
        prefix: Vec::new(),
    }
}

fn block(x: &H) -> [u8; 512] {
    let mut b = [0u8; 512];
    let n = x.name.len().min(100);
    b[..n].copy_from_slice(&x.name[..n]);
    octal(&mut b[100..108], x.mode);
    if x.uid > 0o7777777 {
        base256(&mut b[108..116], x.uid);
    } else {
        octal(&mut b[108..116], x.uid);
    }
    octal(&mut b[116..124], x.gid);
    if x.size > 0o77777777777 {
        base256(&mut b[124..136], x.size);
    } else {
        octal(&mut b[124..136], x.size);
    }
    octal(&mut b[136..148], x.mtime);
    b[156] = x.typ;
    let l = x.link.len().min(100);
    b[157..157 + l].copy_from_slice(&x.link[..l]);
    if x.gnu {
        b[257..265].copy_from_slice(GNU_MAGIC);
    } else {
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        let p = x.prefix.len().min(155);
        b[345..345 + p].copy_from_slice(&x.prefix[..p]);
    }
    octal(&mut b[329..337], x.dev.0);
    octal(&mut b[337..345], x.dev.1);
    checksum(&mut b);
    b
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

/// A tar under construction.
#[derive(Default, Clone)]
struct Tar(Vec<u8>);

impl Tar {
    fn entry(mut self, x: H, data: &[u8]) -> Tar {
        self.0.extend_from_slice(&block(&x));
        self.0.extend_from_slice(data);
        pad(&mut self.0);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.entry(h(name, b'0', data.len() as u64), data)
    }
    fn dir(self, name: &str) -> Tar {
        self.entry(h(name, b'5', 0), b"")
    }
    fn link(self, name: &str, typ: u8, target: &str) -> Tar {
        let mut x = h(name, typ, 0);
        x.link = target.as_bytes().to_vec();
        self.entry(x, b"")
    }
    fn pax(self, typ: u8, records: &[(&str, &[u8])]) -> Tar {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend_from_slice(&pax_record(k, v));
        }
        self.entry(h("PaxHeaders/x", typ, body.len() as u64), &body)
    }
    fn gnu_long(self, typ: u8, name: &[u8]) -> Tar {
        let mut x = h("././@LongLink", typ, name.len() as u64 + 1);
        x.gnu = true;
        let mut data = name.to_vec();
        data.push(0);
        self.entry(x, &data)
    }
    fn raw(mut self, bytes: &[u8]) -> Tar {
        self.0.extend_from_slice(bytes);
        self
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body_len = k.len() + v.len() + 3;
    let mut n = body_len + 1;
    while n.to_string().len() + body_len != n {
        n += 1;
    }
    let mut r = format!("{n} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

/// An old-GNU sparse (`S`) entry: up to 4 segments in the header, more in extension blocks.
fn old_gnu_sparse(name: &str, real: u64, segs: &[(u64, u64)], data: &[u8]) -> Tar {
    let mut x = h(name, b'S', data.len() as u64);
    x.gnu = true;
    let mut b = block(&x);
    let put = |b: &mut [u8], at: usize, (o, l): (u64, u64)| {
        octal(&mut b[at..at + 12], o);
        octal(&mut b[at + 12..at + 24], l);
    };
    for (i, s) in segs.iter().take(4).enumerate() {
        put(&mut b, 386 + i * 24, *s);
    }
    b[482] = (segs.len() > 4) as u8;
    octal(&mut b[483..495], real);
    checksum(&mut b);
    let mut out = b.to_vec();
    let mut rest = segs.iter().skip(4).collect::<Vec<_>>();
    while !rest.is_empty() {
        let mut e = [0u8; 512];
        let take: Vec<_> = rest.drain(..rest.len().min(21)).collect();
        for (i, s) in take.iter().enumerate() {
            put(&mut e, i * 24, **s);
        }
        e[504] = (!rest.is_empty()) as u8;
        out.extend_from_slice(&e);
    }
    out.extend_from_slice(data);
    pad(&mut out);
    Tar(out)
}

fn pax_sparse(format: &str, name: &str, real: u64, segs: &[(u64, u64)], data: &[u8]) -> Tar {
    let placeholder = format!("GNUSparseFile.0/{name}");
    let real_s = real.to_string();
    match format {
        "0.0" => {
            let mut recs: Vec<(String, Vec<u8>)> = vec![
                ("GNU.sparse.size".into(), real_s.clone().into_bytes()),
                ("GNU.sparse.numblocks".into(), segs.len().to_string().into_bytes()),
            ];
            for (o, l) in segs {
                recs.push(("GNU.sparse.offset".into(), o.to_string().into_bytes()));
                recs.push(("GNU.sparse.numbytes".into(), l.to_string().into_bytes()));
            }
            let r: Vec<(&str, &[u8])> = recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            Tar::default().pax(b'x', &r).entry(h(name, b'0', data.len() as u64), data)
        }
        "0.1" => {
            let map: Vec<String> = segs.iter().flat_map(|(o, l)| [o.to_string(), l.to_string()]).collect();
            let map = map.join(",");
            Tar::default()
                .pax(
                    b'x',
                    &[
                        ("GNU.sparse.size", real_s.as_bytes()),
                        ("GNU.sparse.numblocks", segs.len().to_string().as_bytes()),
                        ("GNU.sparse.map", map.as_bytes()),
                        ("GNU.sparse.name", name.as_bytes()),
                    ],
                )
                .entry(h(&placeholder, b'0', data.len() as u64), data)
        }
        _ => {
            let mut map = format!("{}\n", segs.len());
            for (o, l) in segs {
                map.push_str(&format!("{o}\n{l}\n"));
            }
            let mut body = map.into_bytes();
            pad(&mut body);
            body.extend_from_slice(data);
            Tar::default()
                .pax(
                    b'x',
                    &[
                        ("GNU.sparse.major", b"1"),
                        ("GNU.sparse.minor", b"0"),
                        ("GNU.sparse.name", name.as_bytes()),
                        ("GNU.sparse.realsize", real_s.as_bytes()),
                    ],
                )
                .entry(h(&placeholder, b'0', body.len() as u64), &body)
        }
    }
}

fn tar_seeds() -> Vec<Vec<u8>> {
    let victim = "/dev/shm/kiln-fuzz/apply/outside";
    let long = "d/".repeat(80) + "file";
    let mut with_owner = h("owned", b'0', 2);
    with_owner.uid = 1000;
    with_owner.gid = 1000;
    with_owner.mode = 0o4755;
    let mut big_uid = h("big-uid", b'0', 0);
    big_uid.uid = 1 << 40;
    let mut prefixed = h("file", b'0', 1);
    prefixed.prefix = b"some/prefix/dir".to_vec();
    let mut chr = h("dev/null", b'3', 0);
    chr.dev = (1, 3);
    let mut blk = h("dev/loop0", b'4', 0);
    blk.dev = (7, 0);
    let mut dir_with_size = h("sizedir", b'5', 3);
    dir_with_size.mode = 0o700;
    let mut symlink_with_size = h("sl", b'2', 5);
    symlink_with_size.link = b"target".to_vec();
    let mut dumpdir = h("dump", b'D', 6);
    dumpdir.gnu = true;
    vec![
        Vec::new(),
        vec![0u8; 1024],
        Tar::default().file("hello", b"hi\n").end(),
        Tar::default().file("hello", b"hi\n").0, // no end marker
        Tar::default()
            .dir("etc")
            .file("etc/motd", b"welcome")
            .link("lib", b'2', "usr/lib")
            .link("motd", b'1', "etc/motd")
            .entry(h("fifo", b'6', 0), b"")
            .entry(chr, b"")
            .entry(blk, b"")
            .end(),
        Tar::default().entry(with_owner, b"ok").entry(big_uid, b"").entry(prefixed, b"x").end(),
        Tar::default().gnu_long(b'L', long.as_bytes()).file("ignored", b"long").end(),
        Tar::default().gnu_long(b'K', long.as_bytes()).gnu_long(b'L', b"ln").link("x", b'2', "y").end(),
        Tar::default().gnu_long(b'L', b"a").gnu_long(b'L', b"b").file("c", b"").end(),
        Tar::default().pax(b'x', &[("path", long.as_bytes()), ("mtime", b"1700000000.123456789")]).file("x", b"").end(),
        Tar::default()
            .pax(b'x', &[("size", b"4"), ("uid", b"70000"), ("gid", b"70000"), ("uname", b"u")])
            .file("pax-size", b"")
            .raw(b"abcd")
            .raw(&[0u8; 508])
            .end(),
        Tar::default()
            .pax(b'x', &[("SCHILY.xattr.user.k", b"v"), ("SCHILY.xattr.security.capability", b"\x01\0\0\x02")])
            .file("xattr", b"x")
            .end(),
        Tar::default().pax(b'x', &[("SCHILY.xattr.trusted.overlay.opaque", b"y")]).dir("opq").end(),
        Tar::default().pax(b'g', &[("comment", b"global")]).file("after-global", b"g").end(),
        Tar::default().pax(b'x', &[("linkpath", long.as_bytes())]).link("plink", b'2', "short").end(),
        Tar::default().pax(b'x', &[("path", b"")]).file("empty-pax-path", b"").end(),
        Tar::default().pax(b'x', &[]).pax(b'x', &[("path", b"two")]).file("p", b"").end(),
        Tar::default().entry(dir_with_size, b"").entry(symlink_with_size, b"").end(),
        Tar::default().entry(dumpdir, b"a\0b\0\0\0").end(),
        Tar::default().file(".wh.gone", b"").file("d/.wh..wh..opq", b"").file("d/kept", b"k").end(),
        Tar::default().dir("./").file("./a/../b", b"b").end(),
        Tar::default().file("../escape", b"x").end(),
        Tar::default().file("/abs/file", b"x").end(),
        Tar::default().link("out", b'2', victim).file("out/victim", b"pwned").end(),
        Tar::default().link("out", b'2', "../outside").file("out/dir/passwd", b"pwned").end(),
        Tar::default().link("hl", b'1', &format!("{victim}/victim")).end(),
        Tar::default().link("hl", b'1', "../outside/victim").end(),
        Tar::default().link("x", b'2', "/").link("x/etc", b'2', "../../outside/dir").file("x/etc/new", b"n").end(),
        Tar::default().file("a", b"1").link("a", b'2', victim).file("a", b"2").end(),
        Tar::default().dir("loop").link("loop/self", b'2', "..").file("loop/self/self/f", b"f").end(),
        Tar::default().file(".", b"root as file").end(),
        Tar::default().link("hl-dir", b'1', "etc").dir("etc").end(),
        old_gnu_sparse("sparse-old", 1 << 20, &[(0, 4), (65536, 4), (1 << 19, 4)], b"aaaabbbbcccc").end(),
        old_gnu_sparse("sparse-ext", 1 << 22, &(0..7u64).map(|i| (i * 8192, 2)).collect::<Vec<_>>(), b"00112233445566")
            .end(),
        old_gnu_sparse("sparse-bad", 10, &[(8, 4)], b"over").end(),
        pax_sparse("0.0", "s00", 100_000, &[(0, 3), (50_000, 3)], b"abcdef").end(),
        pax_sparse("0.1", "s01", 100_000, &[(10, 3), (99_000, 3)], b"abcdef").end(),
        pax_sparse("1.0", "s10", 1 << 20, &[(4096, 5), (800_000, 5)], b"abcdefghij").end(),
        pax_sparse("1.0", "s10-empty", 4096, &[], b"").end(),
        {
            let mut t = Tar::default().file("trunc", &[7u8; 2000]).0;
            t.truncate(700);
            t
        },
        {
            let mut t = Tar::default().file("badsum", b"x").end();
            t[148] = b'7';
            t
        },
        Tar::default().file("zero-then-more", b"").raw(&[0u8; 512]).file("more", b"").end(),
        Tar::default().end().into_iter().chain(b"trailing garbage".iter().copied()).collect(),
        Tar::default().entry(h("unknown-type", b'Z', 0), b"").end(),
        Tar::default().entry(h("multivolume", b'M', 0), b"").end(),
        Tar::default().entry(h("contiguous", b'7', 1), b"c").end(),
        Tar::default().entry(h("v7-regular", 0, 1), b"v").end(),
    ]
}

// ---- JSON ---------------------------------------------------------------------------------------------------

fn sha(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in d.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn config_json(diff_ids: &[String]) -> String {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"User":"1000:1000","Env":["PATH=/bin"],"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"WorkingDir":"/","Labels":{{"a":"b"}}}},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[{{"created_by":"x"}}]}}"#,
        ids.join(",")
    )
}

fn manifest_json(config: &[u8], layers: &[(&[u8], &str)]) -> String {
    let ls: Vec<String> = layers
        .iter()
        .map(|(b, mt)| format!(r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#, sha(b), b.len()))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"{CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        sha(config),
        config.len(),
        ls.join(",")
    )
}

fn index_json(manifest: &[u8], name: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}]}}"#,
        sha(manifest),
        manifest.len()
    )
}

fn json_seeds() -> Vec<Vec<u8>> {
    let layer = Tar::default().file("f", b"x").end();
    let config = config_json(&[sha(&layer)]);
    let manifest = manifest_json(config.as_bytes(), &[(&layer, LAYER)]);
    let index = index_json(manifest.as_bytes(), "latest");
    let docker_manifest = manifest
        .replace(MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")
        .replace(CONFIG, "application/vnd.docker.container.image.v1+json");
    let docs: Vec<(u8, String)> = vec![
        (0, index.clone()),
        (0, r#"{"schemaVersion":2,"manifests":[]}"#.into()),
        (0, index.replace("\"schemaVersion\":2", "\"schemaVersion\":2,\"schemaVersion\":2")),
        (0, index.replace("sha256:", "sha256:Z")),
        (0, index.replace("\"size\":", "\"size\":-")),
        (0, index.replace(INDEX, MANIFEST)),
        (0, r#"{"schemaVersion":2,"manifests":[{"mediaType":"x/y","digest":"sha512:00","size":1}]}"#.into()),
        (1, manifest.clone()),
        (1, manifest.replace("\"schemaVersion\":2", "\"schemaVersion\":1")),
        (1, manifest.replace("\"layers\":[", "\"manifests\":[],\"layers\":[")),
        (1, manifest.replace(CONFIG, "application/vnd.example+json")),
        (1, manifest.replace("\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",", "")),
        (1, format!("{} ", manifest)),
        (1, manifest.replace("}]}", "}],\"annotations\":{\"k\":\"v\",\"k\":\"w\"}}")),
        (
            1,
            manifest
                .replace("\"layers\":[", "\"layers\":[{\"mediaType\":\"a/b\",\"digest\":\"sha256:00\",\"size\":1},"),
        ),
        (2, docker_manifest),
        (3, config.clone()),
        (3, config.replace("\"os\":\"linux\"", "\"os\":\"\"")),
        (3, config.replace("\"layers\"", "\"other\"")),
        (3, config.replace("\"User\":\"1000:1000\"", "\"User\":null")),
        (3, config.replace("\"Env\":[", "\"Env\":null,\"Env\":[")),
        (3, config.replace("]}}", "]}},\"x\":1e999")),
        (4, r#"{"a":{"b":1,"b":2}}"#.into()),
        (4, r#"[{"a":1},{"a":1}]"#.into()),
        (4, r#"{"a":"\u0000","\ud83d\ude00":[]}"#.into()),
        (4, r#"{"a":"\ud800"}"#.into()),
        (4, "[".repeat(200) + &"]".repeat(200)),
        (4, r#"{"a":1} x"#.into()),
        (4, "1.5e308".into()),
    ];
    docs.into_iter()
        .map(|(w, d)| {
            let mut v = vec![w];
            v.extend_from_slice(d.as_bytes());
            v
        })
        .collect()
}

// ---- archives -----------------------------------------------------------------------------------------------

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha(bytes)[7..])
}

fn oci_archive(layer: &[u8], name: &str) -> Vec<u8> {
    let config = config_json(&[sha(layer)]);
    let manifest = manifest_json(config.as_bytes(), &[(layer, LAYER)]);
    let index = index_json(manifest.as_bytes(), name);
    Tar::default()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", index.as_bytes())
        .dir("blobs/")
        .dir("blobs/sha256/")
        .file(&blob_path(layer), layer)
        .file(&blob_path(config.as_bytes()), config.as_bytes())
        .file(&blob_path(manifest.as_bytes()), manifest.as_bytes())
        .end()
}

fn docker_archive(layer: &[u8], symlinked: bool) -> Vec<u8> {
    let config = config_json(&[sha(layer)]);
    let cfg_name = format!("{}.json", &sha(config.as_bytes())[7..]);
    let manifest = format!(r#"[{{"Config":"{cfg_name}","RepoTags":["busybox:latest"],"Layers":["abc/layer.tar"]}}]"#);
    let t = Tar::default().file("manifest.json", manifest.as_bytes()).file(&cfg_name, config.as_bytes()).dir("abc/");
    let t = if symlinked {
        t.file("blob.tar", layer).link("abc/layer.tar", b'2', "../blob.tar")
    } else {
        t.file("abc/layer.tar", layer)
    };
    t.end()
}

fn archive_seeds() -> Vec<Vec<u8>> {
    let layer = Tar::default().dir("etc").file("etc/motd", b"hi").link("sh", b'2', "busybox").end();
    let oci = oci_archive(&layer, "latest");
    let docker = docker_archive(&layer, false);
    vec![
        oci.clone(),
        gzip(&oci),
        oci_archive(&gzip(&layer), "v1"),
        docker.clone(),
        gzip(&docker),
        docker_archive(&layer, true),
        Tar::default().file("manifest.json", b"[]").end(),
        Tar::default().file("manifest.json", br#"[{"Config":"../x","Layers":[]}]"#).end(),
        Tar::default().file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).file("index.json", b"{}").end(),
        Tar::default().link("manifest.json", b'2', "/etc/passwd").end(),
        Tar::default().link("abc/layer.tar", b'2', "../../../etc/shadow").file("manifest.json", b"[]").end(),
        Tar::default().file("../up", b"x").end(),
        Tar::default().entry(h("fifo", b'6', 0), b"").end(),
        b"not a tarball".to_vec(),
        gzip(b"not a tarball either"),
        vec![0x1f, 0x8b, 8, 0],
    ]
}

// ---- user database and references ---------------------------------------------------------------------------

fn userdb_seeds() -> Vec<Vec<u8>> {
    let passwd = "root:x:0:0:root:/root:/bin/sh\nbin:x:1:1::/bin:/sbin/nologin\napp:x:1000:1000:App:/home/app:/bin/sh\n# comment\n+nis\n\nbroken\nbig:x:4294967295:4294967295::/:/bin/sh\nneg:x:-1:-1::/:\nwide:x:99999999999:1::/:\n";
    let group = "root:x:0:root\nwheel:x:10:app,root\napp:x:1000:\nstaff:x:50:app\ndup:x:50:app\nbad:x:notanumber:app\nmax:x:4294967295:app\n";
    let users = [
        "",
        "root",
        "app",
        "1000",
        "1000:1000",
        "app:wheel",
        "app:10",
        "0:staff",
        "nobody",
        "4294967295",
        "4294967294",
        "-1",
        "+5",
        "app:",
        ":app",
        "a:b:c",
        "big",
        "neg",
        "wide",
        "app:max",
        "01000",
        " app",
    ];
    let mut out = Vec::new();
    for u in users {
        out.push([passwd.as_bytes(), b"\0", group.as_bytes(), b"\0", u.as_bytes()].concat());
    }
    out.push([b"root:x:0:0::/:\r\n".as_slice(), b"\0", b"g:x:1:root\r\n", b"\0", b"root"].concat());
    out.push([vec![b'a'; 300].as_slice(), b"\0\0app"].concat());
    out.push(b"\0\0".to_vec());
    out
}

fn reference_seeds() -> Vec<Vec<u8>> {
    let d = sha(b"x");
    [
        "",
        "latest",
        "v1.0",
        "docker.io/library/busybox:latest",
        "busybox@sha256:0000",
        &d,
        &format!("@{d}"),
        &format!("/tmp/layout:{d}"),
        &format!("/tmp/layout@{d}"),
        "/tmp/layout:tag",
        "/tmp/a:b/c",
        "sha512:abcd",
        "blake3:00",
        "a/../b",
        "a//b",
        "linux/amd64",
        "linux/arm64/v8",
        "linux/arm/v7",
        "Linux/AMD64",
        "macos/arm64",
        "windows/amd64/v3",
        "linux/x86_64",
        "linux/aarch64",
        "linux//amd64",
        "linux/amd64/v2/extra",
        "a\u{7}b",
        "ünïcode",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn write(dir: &Path, target: &str, seeds: Vec<Vec<u8>>) -> std::io::Result<usize> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:03}")), s)?;
    }
    Ok(seeds.len())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).map(std::path::PathBuf::from).unwrap_or_else(|| "corpus".into());
    let tars = tar_seeds();
    // apply: each tar plain (mode 0), gzipped by the harness (1), as a gzip stream (2), with overlay whiteouts
    // (4) and with tiny caps (8).
    let mut apply = Vec::new();
    for t in &tars {
        for mode in [0u8, 1, 4, 8] {
            apply.push([&[mode][..], t].concat());
        }
        apply.push([&[2u8][..], &gzip(t)].concat());
    }
    let counts = [
        ("tar", write(&dir, "tar", tars.clone())?),
        ("apply", write(&dir, "apply", apply)?),
        ("json", write(&dir, "json", json_seeds())?),
        ("archive", write(&dir, "archive", archive_seeds())?),
        ("userdb", write(&dir, "userdb", userdb_seeds())?),
        ("reference", write(&dir, "reference", reference_seeds())?),
    ];
    for (t, n) in counts {
        println!("{t}: {n} seeds in {}", dir.join(t).display());
    }
    Ok(())
}
