//! One test per item of docs/conversion.md sections H and I, named after it. Every generated
//! `config.json` is also validated against the runtime-spec schema (see `golden/support.rs`).
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
#[path = "golden/support.rs"]
mod support;

use std::collections::BTreeMap;

use kiln::convert::{self, Error, Overrides, Source, UserDb};
use kiln::ErrorKind;
use serde_json::json;
use support::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    app:x:1001:1002::/home/app:/bin/sh\n\
    0day:x:1500:1500::/:/bin/sh\n";
const GROUP: &str = "root:x:0:\n\
    wheel:x:10:app\n\
    secret:x:50:\n\
    staff:x:60:\n\
    app:x:1002:\n\
    docker:x:999:root,app\n";

fn users() -> UserDb {
    db(PASSWD, GROUP)
}

fn with_user(user: &str) -> Result<convert::Conversion, Error> {
    let img = image(json!({"User": user, "Cmd": ["sh"]}));
    convert::convert(&img, &Overrides::default(), &users())
}

fn proc_user(c: &convert::Conversion) -> (u32, u32, Vec<u32>) {
    let u = json(c)["process"]["user"].clone();
    let gids = u["additionalGids"].as_array().expect("additionalGids is always set").iter();
    (
        u["uid"].as_u64().expect("uid") as u32,
        u["gid"].as_u64().expect("gid") as u32,
        gids.map(|g| g.as_u64().expect("gid") as u32).collect(),
    )
}

fn args(c: &convert::Conversion) -> Vec<String> {
    serde_json::from_value(json(c)["process"]["args"].clone()).expect("args")
}

fn env(c: &convert::Conversion) -> Vec<String> {
    serde_json::from_value(json(c)["process"]["env"].clone()).expect("env")
}

fn annotations(c: &convert::Conversion) -> BTreeMap<String, String> {
    serde_json::from_value(json(c)["annotations"].clone()).unwrap_or_default()
}

fn destinations(c: &convert::Conversion) -> Vec<String> {
    json(c)["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["destination"].as_str().unwrap_or("").into())
        .collect()
}

// ---- General rules ----

// H1 (image only → golden file) is in convert_golden.rs.

#[test]
fn h2_caller_edits_image_values() {
    let img = image(json!({"Env": ["A=1", "SECRET=x", "B=2"], "Cmd": ["sh"]}));
    let o = Overrides { env: vec!["SECRET".into(), "A=9".into()], ..Overrides::default() };
    let c = convert_ok(&img, &o, &UserDb::default());
    assert_eq!(env(&c), ["A=9", "B=2", kiln::convert::defaults::PATH]);
    assert_eq!(c.explain.field("process.env.SECRET").map(|f| f.source), Some(Source::Caller));
}

#[test]
fn h3_defaults_only_add_env_names() {
    let img = image(json!({"Env": ["PATH=/opt/bin"], "Cmd": ["sh"]}));
    let c = convert_image(&img);
    assert_eq!(env(&c), ["PATH=/opt/bin"]);
    let c = convert_ok(&img, &Overrides { terminal: true, ..Overrides::default() }, &UserDb::default());
    assert_eq!(env(&c), ["PATH=/opt/bin", "TERM=xterm"]);
    let img = image(json!({"Env": ["TERM=vt100"], "Cmd": ["sh"]}));
    let c = convert_ok(&img, &Overrides { terminal: true, ..Overrides::default() }, &UserDb::default());
    assert_eq!(env(&c), ["TERM=vt100", kiln::convert::defaults::PATH]);
    assert_eq!(c.explain.field("process.env.PATH").map(|f| f.source), Some(Source::Default));
}

#[test]
fn h4_kiln_defaults_cannot_come_from_the_image() {
    // Docker-era security fields in an image config are unknown fields: ignored (E5), never applied
    // (CVE-2014-6408).
    let img: kiln::image::ImageConfig = serde_json::from_value(json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Cmd": ["sh"], "Privileged": true, "CapAdd": ["CAP_SYS_ADMIN"], "Devices": [{"PathOnHost": "/dev/sda"}],
                   "SecurityOpt": ["seccomp=unconfined"], "Hostname": "evil"}
    }))
    .expect("extra fields are accepted");
    let v = json(&convert_image(&img));
    let mut caps: Vec<&str> = v["process"]["capabilities"]["bounding"]
        .as_array()
        .expect("bounding")
        .iter()
        .map(|c| c.as_str().unwrap_or(""))
        .collect();
    caps.sort();
    let mut want: Vec<String> = kiln::convert::defaults::CAPABILITIES
        .iter()
        .map(|c| serde_json::to_value(c).expect("cap").as_str().unwrap_or("").to_owned())
        .collect();
    want.sort();
    assert_eq!(caps, want);
    assert!(!caps.contains(&"CAP_SYS_ADMIN"));
    assert_eq!(v["process"]["capabilities"]["effective"], v["process"]["capabilities"]["bounding"]);
    assert!(v["process"]["capabilities"].get("ambient").is_none());
    assert_eq!(v["process"]["noNewPrivileges"], true);
    assert!(v["linux"].get("devices").is_none());
    assert!(v["linux"].get("seccomp").is_none());
    assert!(v.get("hostname").is_none());
    assert_eq!(v["linux"]["resources"]["devices"], json!([{"allow": false, "access": "rwm"}]));
    assert_eq!(v["process"]["rlimits"], json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]));
    assert!(v["linux"]["maskedPaths"].as_array().is_some_and(|m| m.contains(&json!("/proc/kcore"))));
    assert!(v["linux"]["readonlyPaths"].as_array().is_some_and(|m| m.contains(&json!("/proc/sys"))));
    assert_eq!(v["process"]["terminal"], false);
}

// ---- Verbatim fields ----

#[test]
fn h5_working_dir_verbatim_and_relative() {
    let c = convert_image(&image(json!({"WorkingDir": "/srv/app/", "Cmd": ["sh"]})));
    assert_eq!(json(&c)["process"]["cwd"], "/srv/app/");
    assert_eq!(c.explain.field("process.cwd").map(|f| (f.source, f.rule.as_str())), Some((Source::Image, "H5")));
    let c = convert_image(&image(json!({"Cmd": ["sh"]})));
    assert_eq!(json(&c)["process"]["cwd"], "/");
    assert_eq!(c.explain.field("process.cwd").map(|f| f.source), Some(Source::Default));
    // Choice: a relative WorkingDir is taken from / (Docker), with a warning.
    let c = convert_image(&image(json!({"WorkingDir": "app/./x/..", "Cmd": ["sh"]})));
    assert_eq!(json(&c)["process"]["cwd"], "/app");
    assert!(c.explain.warnings.iter().any(|w| w.rule == "H5"));
}

#[test]
fn h5_cwd_under_proc_rejected() {
    for cwd in ["/proc/self/fd/7", "/proc", "/x/../proc/self/cwd", "//proc/1/root", "proc/self/fd/8"] {
        let err = convert::convert(&image(json!({"WorkingDir": cwd, "Cmd": ["sh"]})), &Overrides::default(), &users())
            .expect_err(cwd);
        assert!(matches!(err, Error::InvalidCwd { .. }), "{cwd}: {err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    let o = Overrides { cwd: Some("/proc/self/fd/9".into()), ..Overrides::default() };
    assert!(convert::convert(&image(json!({"Cmd": ["sh"]})), &o, &users()).is_err());
    // Not /proc: a sibling with the same prefix is fine.
    let c = convert_image(&image(json!({"WorkingDir": "/procfs", "Cmd": ["sh"]})));
    assert_eq!(json(&c)["process"]["cwd"], "/procfs");
}

#[test]
fn h6_env_verbatim_and_merge() {
    let img = image(json!({"Env": ["A=1", "PATH=/x", "A=2", "FOO", "E="], "Cmd": ["sh"]}));
    // Verbatim: duplicates, an entry without '=' and an empty value are kept as they are, in order.
    assert_eq!(env(&convert_image(&img)), ["A=1", "PATH=/x", "A=2", "FOO", "E="]);
    // Caller A=9 replaces by name (the first entry; later duplicates go); FOO=bar replaces the bare FOO.
    let o = Overrides { env: vec!["A=9".into(), "FOO=bar".into(), "NEW=1".into()], ..Overrides::default() };
    assert_eq!(env(&convert_ok(&img, &o, &UserDb::default())), ["A=9", "PATH=/x", "FOO=bar", "E=", "NEW=1"]);
    let o = Overrides { env: vec!["=x".into()], ..Overrides::default() };
    assert!(matches!(convert::convert(&img, &o, &UserDb::default()), Err(Error::InvalidEnv { .. })));
}

#[test]
fn h7_cmd_appended_to_entrypoint() {
    let cases = [
        (json!({"Entrypoint": ["/bin/app"], "Cmd": ["--x"]}), vec!["/bin/app", "--x"]),
        (json!({"Cmd": ["sh", "-c", "echo"]}), vec!["sh", "-c", "echo"]),
        (json!({"Entrypoint": ["/bin/app", "a"]}), vec!["/bin/app", "a"]),
        (json!({"Entrypoint": [], "Cmd": ["sh"]}), vec!["sh"]),
        (json!({"Entrypoint": null, "Cmd": ["sh"]}), vec!["sh"]),
    ];
    for (cfg, want) in cases {
        let c = convert_image(&image(cfg.clone()));
        assert_eq!(args(&c), want, "{cfg}");
        assert_eq!(c.explain.field("process.args").map(|f| f.rule.as_str()), Some("H7"));
    }
}

#[test]
fn h8_cri_override_semantics() {
    let img = image(json!({"Entrypoint": ["e"], "Cmd": ["c"], "User": "app", "WorkingDir": "/w"}));
    let run = |o: Overrides| convert_ok(&img, &o, &users());
    let c = run(Overrides { entrypoint: Some(vec!["x".into()]), ..Overrides::default() });
    assert_eq!(args(&c), ["x"]);
    assert_eq!(c.explain.field("process.args").map(|f| (f.source, f.rule.as_str())), Some((Source::Caller, "H8")));
    assert_eq!(args(&run(Overrides { args: Some(vec!["y".into()]), ..Overrides::default() })), ["e", "y"]);
    let both = Overrides { entrypoint: Some(vec!["x".into()]), args: Some(vec!["y".into()]), ..Overrides::default() };
    assert_eq!(args(&run(both)), ["x", "y"]);
    // Other overrides: user, cwd, terminal, read-only rootfs, extra mounts, extra gids.
    let mut m = oci_spec::runtime::Mount::default();
    m.set_destination("/data".into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some("/srv/data".into()));
    m.set_options(Some(vec!["rbind".into(), "ro".into()]));
    let o = Overrides {
        user: Some("1234:5678".into()),
        additional_gids: vec![7, 5678],
        cwd: Some("/tmp".into()),
        terminal: true,
        readonly_rootfs: true,
        mounts: vec![m],
        ..Overrides::default()
    };
    let c = run(o);
    let v = json(&c);
    assert_eq!(proc_user(&c), (1234, 5678, vec![5678, 7]));
    assert_eq!(v["process"]["cwd"], "/tmp");
    assert_eq!(v["process"]["terminal"], true);
    assert_eq!(v["root"], json!({"path": "rootfs", "readonly": true}));
    assert!(destinations(&c).contains(&"/data".to_string()));
    assert_eq!(c.explain.field("mounts./data").map(|f| f.source), Some(Source::Caller));
}

#[test]
fn image_config_never_mutated_by_overrides() {
    // CVE-2021-21334: one container's overrides must not leak into the next.
    let img = image(json!({"Env": ["X=1"], "Cmd": ["sh"]}));
    let before = img.clone();
    let with_foo = Overrides { env: vec!["FOO=1".into()], user: Some("7".into()), ..Overrides::default() };
    let a = convert_ok(&img, &with_foo, &UserDb::default());
    let b = convert_image(&img);
    assert_eq!(img, before);
    assert!(env(&a).contains(&"FOO=1".to_string()));
    assert!(!env(&b).iter().any(|e| e.starts_with("FOO")));
    // Outputs do not depend on what was converted before.
    let a2 = convert_ok(&img, &with_foo, &UserDb::default());
    assert_eq!(a.to_json_bytes().expect("a"), a2.to_json_bytes().expect("a2"));
    assert_eq!(b.to_json_bytes().expect("b"), convert_image(&img).to_json_bytes().expect("b2"));
}

// ---- Annotations ----

fn annotated(top: serde_json::Value, cfg: serde_json::Value) -> BTreeMap<String, String> {
    annotations(&convert_image(&image_with(top, cfg)))
}

#[test]
fn h9_os_annotation() {
    assert_eq!(annotated(json!({}), json!({"Cmd": ["sh"]}))["org.opencontainers.image.os"], "linux");
}

#[test]
fn h10_architecture_annotation() {
    let a = annotated(json!({"architecture": "arm64"}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.architecture"], "arm64");
}

#[test]
fn h11_variant_annotation() {
    let a = annotated(json!({"architecture": "arm64", "variant": "v8"}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.variant"], "v8");
    assert!(!annotated(json!({}), json!({"Cmd": ["sh"]})).contains_key("org.opencontainers.image.variant"));
}

#[test]
fn h12_os_version_annotation() {
    let a = annotated(json!({"os.version": "10.0.17763.1"}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.os.version"], "10.0.17763.1");
}

#[test]
fn h13_os_features_annotation() {
    let a = annotated(json!({"os.features": ["win32k"]}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.os.features"], "win32k");
    let a = annotated(json!({"os.features": ["b", "a"]}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.os.features"], "b,a");
}

#[test]
fn h14_author_annotation_singular() {
    let a = annotated(json!({"author": "A <a@x>"}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.author"], "A <a@x>");
    assert!(!a.contains_key("org.opencontainers.image.authors"));
}

#[test]
fn h15_created_annotation_verbatim() {
    let a = annotated(json!({"created": "yesterday"}), json!({"Cmd": ["sh"]}));
    assert_eq!(a["org.opencontainers.image.created"], "yesterday");
}

#[test]
fn h16_stop_signal_annotation() {
    let a = annotated(json!({}), json!({"Cmd": ["sh"], "StopSignal": "SIGRTMIN+3"}));
    assert_eq!(a["org.opencontainers.image.stopSignal"], "SIGRTMIN+3");
}

#[test]
fn h17_labels_become_annotations() {
    let a = annotated(json!({}), json!({"Cmd": ["sh"], "Labels": {"com.example.a": "b", "empty": ""}}));
    assert_eq!(a["com.example.a"], "b");
    assert_eq!(a["empty"], "");
}

#[test]
fn h18_labels_win_over_implicit_keys() {
    let c = convert_image(&image(json!({"Cmd": ["sh"], "Labels": {"org.opencontainers.image.os": "plan9"},
        "ExposedPorts": {"80/tcp": {}}})));
    assert_eq!(annotations(&c)["org.opencontainers.image.os"], "plan9");
    let f = c.explain.field("annotations.org.opencontainers.image.os").expect("explained");
    assert_eq!((f.source, f.rule.as_str()), (Source::Image, "H18"));
    let c = convert_image(&image(json!({"Cmd": ["sh"],
        "Labels": {"org.opencontainers.image.exposedPorts": "mine"}, "ExposedPorts": {"80/tcp": {}}})));
    assert_eq!(annotations(&c)["org.opencontainers.image.exposedPorts"], "mine");
}

#[test]
fn h19_manifest_annotations_not_copied() {
    // convert takes no manifest at all: the only annotations are the config's implicit keys and labels.
    let a = annotated(json!({}), json!({"Cmd": ["sh"], "Labels": {"l": "1"}}));
    let keys: Vec<&str> = a.keys().map(String::as_str).collect();
    assert_eq!(keys, ["l", "org.opencontainers.image.architecture", "org.opencontainers.image.os"]);
}

#[test]
fn h20_values_byte_exact_and_caller_keys_win() {
    let weird = "  trailing \n\t\u{0}\u{7f} ünï ";
    let img = image(json!({"Cmd": ["sh"], "Labels": {
        "w": weird,
        "containerd.io/restart.loguri": "binary:///bin/sh?args=pwn",
        "io.kubernetes.cri.sandbox-id": "from-image"
    }}));
    let mut caller = BTreeMap::new();
    caller.insert("io.kubernetes.cri.sandbox-id".to_string(), "engine".to_string());
    let c = convert_ok(&img, &Overrides { annotations: caller, ..Overrides::default() }, &UserDb::default());
    let a = annotations(&c);
    assert_eq!(a["w"], weird);
    assert_eq!(a["io.kubernetes.cri.sandbox-id"], "engine");
    // CVE-2026-53488: image-derived keys are visible as such.
    let from_image = c.explain.image_annotation_keys();
    assert!(from_image.contains(&"containerd.io/restart.loguri"));
    assert!(!from_image.contains(&"io.kubernetes.cri.sandbox-id"));
    assert_eq!(c.explain.field("annotations.io.kubernetes.cri.sandbox-id").map(|f| f.source), Some(Source::Caller));
}

// ---- Config.User ----

#[test]
fn h21_six_user_forms() {
    let cases = [
        ("app", (1001, 1002)),
        ("1001", (1001, 1002)),
        ("app:staff", (1001, 60)),
        ("1001:77", (1001, 77)),
        ("1001:staff", (1001, 60)),
        ("app:77", (1001, 77)),
    ];
    for (user, (uid, gid)) in cases {
        let c = with_user(user).unwrap_or_else(|e| panic!("{user}: {e}"));
        let (u, g, _) = proc_user(&c);
        assert_eq!((u, g), (uid, gid), "{user}");
    }
}

#[test]
fn h22_numeric_ids_verbatim_and_overflow() {
    let none = UserDb::default();
    let run = |user: &str| convert::convert(&image(json!({"User": user, "Cmd": ["sh"]})), &Overrides::default(), &none);
    let c = run("1000:1000").expect("numeric ids need no passwd");
    assert_eq!(proc_user(&c), (1000, 1000, vec![1000]));
    for (user, uid, gid) in [
        ("2147483647:2147483647", 2147483647, 2147483647),
        ("2147483648:2147483648", 2147483648, 2147483648),
        ("4294967294", 4294967294, 0),
        ("007", 7, 0),
    ] {
        let c = run(user).unwrap_or_else(|e| panic!("{user}: {e}"));
        let (u, g, _) = proc_user(&c);
        assert_eq!((u, g), (uid, gid), "{user}");
    }
    // CVE-2024-40635: never wrap to 0.
    for user in ["4294967295", "4294967296", "1:4294967296", "99999999999999999999"] {
        let err = run(user).expect_err(user);
        assert!(matches!(err, Error::IdOutOfRange { .. }), "{user}: {err}");
    }
    for user in ["-1", "+5", "1:-1", "1:2:3", ":1", "1:", "a\0b"] {
        let err = run(user).expect_err(user);
        assert!(matches!(err, Error::InvalidUser { .. }), "{user}: {err}");
    }
    // `0x10` is not a number: it is a name, and there is none.
    assert!(matches!(run("0x10"), Err(Error::UserNotFound { .. })));
}

#[test]
fn h23_names_resolved_in_rootfs() {
    let c = with_user("app").expect("app");
    assert_eq!(proc_user(&c).0, 1001);
    let f = c.explain.field("process.user.uid").expect("explained");
    assert_eq!((f.source, f.rule.as_str()), (Source::Image, "H23"));
    // A numeric-looking name is a name.
    let c = with_user("0day").expect("0day");
    assert_eq!(proc_user(&c).0, 1500);
}

#[test]
fn h24_supplementary_groups_from_etc_group() {
    // CVE-2023-25173 fixture: `secret` (50) lists no members and must not appear.
    let c = with_user("app").expect("app");
    assert_eq!(proc_user(&c), (1001, 1002, vec![1002, 10, 999]));
    assert_eq!(c.explain.field("process.user.additionalGids").map(|f| f.rule.as_str()), Some("H24"));
}

#[test]
fn h25_group_given_ignores_memberships() {
    assert_eq!(proc_user(&with_user("app:staff").expect("app:staff")), (1001, 60, vec![60]));
    assert_eq!(proc_user(&with_user("app:50").expect("app:50")), (1001, 50, vec![50]));
    let o = Overrides { additional_gids: vec![4000], ..Overrides::default() };
    let c = convert_ok(&image(json!({"User": "app:staff", "Cmd": ["sh"]})), &o, &users());
    assert_eq!(proc_user(&c), (1001, 60, vec![60, 4000]));
}

#[test]
fn h25_numeric_user_gets_memberships_like_containerd() {
    // Choice: containerd looks up the passwd name of a numeric uid and adds its memberships.
    assert_eq!(proc_user(&with_user("1001").expect("1001")), (1001, 1002, vec![1002, 10, 999]));
    // A uid without a passwd entry: gid 0, no memberships.
    assert_eq!(proc_user(&with_user("4242").expect("4242")), (4242, 0, vec![0]));
}

#[test]
fn h26_unknown_user_or_group_is_error() {
    let err = with_user("ghost").expect_err("ghost");
    assert!(matches!(&err, Error::UserNotFound { name, .. } if name == "ghost"));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = with_user("app:nogroup").expect_err("nogroup");
    assert!(matches!(&err, Error::GroupNotFound { group, .. } if group == "nogroup"));
    // A rootfs without /etc/passwd: names fail, and the message says why.
    let err =
        convert::convert(&image(json!({"User": "app", "Cmd": ["sh"]})), &Overrides::default(), &UserDb::default())
            .expect_err("no passwd");
    assert!(err.to_string().contains("no /etc/passwd"), "{err}");
}

#[test]
fn h27_absent_user_is_root() {
    let c = convert_ok(&image(json!({"Cmd": ["sh"]})), &Overrides::default(), &users());
    // Choice (containerd): root's memberships from /etc/group (docker lists root).
    assert_eq!(proc_user(&c), (0, 0, vec![0, 999]));
    assert_eq!(c.explain.field("process.user.uid").map(|f| f.source), Some(Source::Default));
    let c = convert_image(&image(json!({"User": "", "Cmd": ["sh"]})));
    assert_eq!(proc_user(&c), (0, 0, vec![0]));
}

// H28 and H29 (reading and parsing the database) are in userdb_hostile.rs and convert::userdb's unit tests.

#[test]
fn h29_first_match_wins_in_conversion() {
    let users = db("app:x:1:1::/:/bin/sh\napp:x:2:2::/:/bin/sh\n", "g:x:5:app\ng:x:6:app\n");
    let c = convert_ok(&image(json!({"User": "app:g", "Cmd": ["sh"]})), &Overrides::default(), &users);
    assert_eq!(proc_user(&c), (1, 5, vec![5]));
}

// ---- Optional fields ----

#[test]
fn h30_optional_fields_toggle() {
    let img = image(json!({"Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}}}));
    let on = convert_image(&img);
    assert!(annotations(&on).contains_key("org.opencontainers.image.exposedPorts"));
    assert!(destinations(&on).contains(&"/data".to_string()));
    let off = convert_ok(&img, &Overrides { include_optional: false, ..Overrides::default() }, &UserDb::default());
    assert!(!annotations(&off).contains_key("org.opencontainers.image.exposedPorts"));
    assert!(!destinations(&off).contains(&"/data".to_string()));
}

#[test]
fn h31_exposed_ports_sorted_annotation() {
    let a = annotated(json!({}), json!({"Cmd": ["sh"], "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "9000": {}}}));
    assert_eq!(a["org.opencontainers.image.exposedPorts"], "53/udp,8080/tcp,9000");
}

#[test]
fn h32_volumes_become_mounts() {
    let c = convert_image(&image(json!({"Cmd": ["sh"], "Volumes": {"/var/lib/db": {}}})));
    let v = json(&c);
    let m = v["mounts"].as_array().and_then(|m| m.iter().find(|m| m["destination"] == "/var/lib/db")).expect("mount");
    assert_eq!(m["type"], "tmpfs");
    assert_eq!(c.volumes.len(), 1);
    assert_eq!(c.volumes[0].source, None);
    assert_eq!(
        c.explain.field("mounts./var/lib/db").map(|f| (f.source, f.rule.as_str())),
        Some((Source::Image, "H32"))
    );
}

#[test]
fn h32_volumes_bind_under_volume_root() {
    let img = image(json!({"Cmd": ["sh"], "Volumes": {"/b": {}, "/a": {}}}));
    let o = Overrides { volume_root: Some("/run/kiln/bundles/x/volumes".into()), ..Overrides::default() };
    let c = convert_ok(&img, &o, &UserDb::default());
    let v = json(&c);
    let mounts = v["mounts"].as_array().expect("mounts");
    let a = mounts.iter().find(|m| m["destination"] == "/a").expect("/a");
    assert_eq!(a["type"], "bind");
    assert_eq!(a["source"], "/run/kiln/bundles/x/volumes/0");
    assert_eq!(a["options"], json!(["rbind", "rprivate"]));
    assert_eq!(c.volumes.iter().map(|v| v.destination.as_str()).collect::<Vec<_>>(), ["/a", "/b"]);
    assert_eq!(c.volumes[1].source.as_deref(), Some(std::path::Path::new("/run/kiln/bundles/x/volumes/1")));
}

#[test]
fn h32_volume_traversal_confined() {
    // CVE-2022-23648: the path stays inside the container root.
    let c = convert_image(&image(
        json!({"Cmd": ["sh"], "Volumes": {"/../../../../../../../../var/lib/kubelet/pki": {}, "data": {}, "/data/": {}}}),
    ));
    let d = destinations(&c);
    assert!(d.contains(&"/var/lib/kubelet/pki".to_string()) && d.contains(&"/data".to_string()));
    assert_eq!(d.iter().filter(|d| *d == "/data").count(), 1);
    assert!(c.explain.warnings.iter().any(|w| w.rule == "H32"));
    for bad in ["/", "/..", "", "/proc", "/proc/sys", "/sys/kernel", "/dev/x"] {
        let err =
            convert::convert(&image(json!({"Cmd": ["sh"], "Volumes": {bad: {}}})), &Overrides::default(), &users())
                .expect_err(bad);
        assert!(matches!(err, Error::InvalidVolume { .. }), "{bad}: {err}");
    }
}

// ---- Runtime bundle output ----

#[test]
fn i1_bundle_layout() {
    let c = convert_image(&image(json!({"Cmd": ["sh"]})));
    assert_eq!(json(&c)["root"]["path"], "rootfs");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rootfs")).expect("rootfs");
    kiln::sys::atomic_write(&dir.path().join("config.json"), &c.to_json_bytes().expect("bytes"), 0o600).expect("write");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(names, ["config.json", "rootfs"]);
}

#[test]
fn i2_oci_version_is_semver() {
    let v = json(&convert_image(&image(json!({"Cmd": ["sh"]}))));
    let version = v["ociVersion"].as_str().expect("ociVersion");
    assert_eq!(version, oci_spec::runtime::VERSION);
    let parts: Vec<&str> = version.split('.').collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())), "{version}");
}

#[test]
fn i3_cwd_is_absolute() {
    for wd in ["", "rel", "/abs", "./x/../y"] {
        let c = convert_image(&image(json!({"WorkingDir": wd, "Cmd": ["sh"]})));
        assert!(json(&c)["process"]["cwd"].as_str().is_some_and(|c| c.starts_with('/')), "{wd}");
    }
}

#[test]
fn i4_empty_args_rejected() {
    for cfg in [json!({}), json!({"Entrypoint": [], "Cmd": []}), serde_json::Value::Null] {
        let err =
            convert::convert(&image(cfg.clone()), &Overrides::default(), &UserDb::default()).expect_err("no args");
        assert!(matches!(err, Error::NoArgs), "{cfg}");
        // The request lacks what the image needs: the caller fixes it by passing args.
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(matches!(convert::process_args(&image(cfg.clone()), &Overrides::default()), Err(Error::NoArgs)));
        // kiln unpack's way (umoci's too): written anyway, args left out, an I4 warning in the explain record.
        let o = Overrides { allow_no_args: true, ..Overrides::default() };
        let c = convert_ok(&image(cfg.clone()), &o, &UserDb::default());
        assert!(json(&c)["process"].get("args").is_none(), "{cfg}: {}", json(&c)["process"]);
        assert!(c.explain.field("process.args").is_none());
        assert!(c.explain.warnings.iter().any(|w| w.rule == "I4" && w.message.contains("process.args")), "{cfg}");
        assert_eq!(convert::process_args(&image(cfg.clone()), &o).unwrap(), Vec::<String>::new());
    }
    // With args from the image, allow_no_args changes nothing.
    let o = Overrides { allow_no_args: true, ..Overrides::default() };
    assert_eq!(args(&convert_ok(&image(json!({"Cmd": ["sh"]})), &o, &UserDb::default())), ["sh"]);
    // E6: no `config` at all, caller args → fine.
    let o = Overrides { args: Some(vec!["/bin/true".into()]), ..Overrides::default() };
    assert_eq!(args(&convert_ok(&image(serde_json::Value::Null), &o, &UserDb::default())), ["/bin/true"]);
    // A caller entrypoint of [] drops Entrypoint and Cmd: nothing left.
    let o = Overrides { entrypoint: Some(vec![]), ..Overrides::default() };
    assert!(matches!(convert::convert(&image(json!({"Cmd": ["sh"]})), &o, &UserDb::default()), Err(Error::NoArgs)));
}

#[test]
fn i5_user_always_emitted() {
    let v = json(&convert_image(&image(json!({"Cmd": ["sh"]}))));
    assert_eq!(v["process"]["user"], json!({"uid": 0, "gid": 0, "additionalGids": [0]}));
}

#[test]
fn i6_env_is_environ_strings() {
    let v = json(&convert_image(&image(json!({"Cmd": ["sh"], "Env": ["A=b=c", "B"]}))));
    assert_eq!(v["process"]["env"], json!(["A=b=c", "B", kiln::convert::defaults::PATH]));
}

#[test]
fn i7_root_path_and_readonly() {
    let img = image(json!({"Cmd": ["sh"]}));
    assert_eq!(json(&convert_image(&img))["root"], json!({"path": "rootfs"}));
    let c = convert_ok(&img, &Overrides { readonly_rootfs: true, ..Overrides::default() }, &UserDb::default());
    assert_eq!(json(&c)["root"], json!({"path": "rootfs", "readonly": true}));
}

#[test]
fn i8_mounts_parent_before_child() {
    let img = image(json!({"Cmd": ["sh"], "Volumes": {"/a/b/c": {}, "/a": {}, "/z": {}, "/a/b": {}}}));
    let mut m = oci_spec::runtime::Mount::default();
    m.set_destination("/a/b/c/d".into());
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some("tmpfs".into()));
    let c = convert_ok(&img, &Overrides { mounts: vec![m], ..Overrides::default() }, &UserDb::default());
    let d = destinations(&c);
    let std = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"];
    assert_eq!(&d[..std.len()], std);
    assert_eq!(&d[std.len()..], ["/a", "/z", "/a/b", "/a/b/c", "/a/b/c/d"]);
    for (i, a) in d.iter().enumerate() {
        for b in &d[i + 1..] {
            assert!(!a.starts_with(&format!("{b}/")), "{a} is mounted before its parent {b}");
        }
    }
}

#[test]
fn i8_caller_mount_replaces_standard_mount_and_volume() {
    let img = image(json!({"Cmd": ["sh"], "Volumes": {"/data": {}}}));
    let mk = |dest: &str| {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some("tmpfs".into()));
        m.set_source(Some("mine".into()));
        m
    };
    let c = convert_ok(
        &img,
        &Overrides { mounts: vec![mk("/dev/shm"), mk("/data")], ..Overrides::default() },
        &UserDb::default(),
    );
    let v = json(&c);
    let mounts = v["mounts"].as_array().expect("mounts");
    for dest in ["/dev/shm", "/data"] {
        let found: Vec<_> = mounts.iter().filter(|m| m["destination"] == dest).collect();
        assert_eq!(found.len(), 1, "{dest}");
        assert_eq!(found[0]["source"], "mine");
    }
    assert!(c.volumes.is_empty());
    let bad = Overrides { mounts: vec![mk("relative")], ..Overrides::default() };
    assert!(matches!(convert::convert(&img, &bad, &UserDb::default()), Err(Error::InvalidMount { .. })));
}

#[test]
fn i9_empty_annotation_keys_impossible() {
    let c = convert_image(&image(json!({"Cmd": ["sh"], "Labels": {"": "x", "ok": "y"}})));
    let a = annotations(&c);
    assert!(!a.contains_key(""));
    assert_eq!(a["ok"], "y");
    assert!(c.explain.warnings.iter().any(|w| w.rule == "I9"));
    let mut caller = BTreeMap::new();
    caller.insert(String::new(), "x".to_string());
    let o = Overrides { annotations: caller, ..Overrides::default() };
    assert!(matches!(
        convert::convert(&image(json!({"Cmd": ["sh"]})), &o, &UserDb::default()),
        Err(Error::InvalidAnnotation { .. })
    ));
}

#[test]
fn i10_namespaces_without_duplicates() {
    let v = json(&convert_image(&image(json!({"Cmd": ["sh"]}))));
    let types: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| n["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["pid", "ipc", "uts", "mount", "network", "cgroup"]);
    let mut dedup = types.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), types.len());
}

#[test]
fn i11_no_user_namespace_or_mappings_by_default() {
    // User namespaces are the bundle's and engine's decision (idmapped mounts, no chown): convert adds none.
    let v = json(&convert_image(&image(json!({"Cmd": ["sh"], "Volumes": {"/v": {}}}))));
    assert!(!v["linux"]["namespaces"].as_array().expect("ns").iter().any(|n| n["type"] == "user"));
    assert!(v["linux"].get("uidMappings").is_none() && v["linux"].get("gidMappings").is_none());
    assert!(v["mounts"].as_array().expect("mounts").iter().all(|m| m.get("uidMappings").is_none()));
}

#[test]
fn i12_runtime_owned_dirs_get_fresh_mounts() {
    // The rootfs fix-up (real /dev, /proc, /sys directories) is the bundle's; convert makes sure those paths
    // are always fresh kernel mounts and that no image volume can take them.
    let d = destinations(&convert_image(&image(json!({"Cmd": ["sh"]}))));
    for p in ["/proc", "/dev", "/sys"] {
        assert!(d.contains(&p.to_string()), "{p}");
    }
    for v in ["/dev", "/proc", "/sys"] {
        assert!(convert::convert(&image(json!({"Cmd": ["sh"], "Volumes": {v: {}}})), &Overrides::default(), &users())
            .is_err());
    }
}

#[test]
fn i13_no_host_paths_without_a_volume_root() {
    // State-dir permissions are the store's and bundle's; convert never points at host paths on its own.
    let c = convert_image(&image(json!({"Cmd": ["sh"], "Volumes": {"/v": {}}})));
    let v = json(&c);
    assert!(v["mounts"].as_array().expect("mounts").iter().all(|m| m["type"] != "bind"));
}

#[test]
fn i14_config_json_written_atomically_and_deterministically() {
    let img = image(json!({"Cmd": ["sh"], "Labels": {"a": "1", "b": "2", "c": "3"}, "Volumes": {"/x": {}, "/y": {}}}));
    let first = convert_image(&img).to_json_bytes().expect("bytes");
    for _ in 0..20 {
        assert_eq!(convert_image(&img).to_json_bytes().expect("bytes"), first);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, b"old").expect("old");
    kiln::sys::atomic_write(&path, &first, 0o600).expect("write");
    assert_eq!(std::fs::read(&path).expect("read"), first);
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file left behind");
}

#[test]
fn e10_e11_reserved_fields_noted_not_mapped() {
    let c = convert_image(&image(json!({"Cmd": ["sh"], "Memory": 1024, "CpuShares": 512, "ArgsEscaped": true})));
    let v = json(&c);
    assert_eq!(args(&c), ["sh"]);
    assert!(v["linux"]["resources"].get("memory").is_none() && v["linux"]["resources"].get("cpu").is_none());
    assert_eq!(c.explain.warnings.iter().filter(|w| w.rule == "E10").count(), 2);
    assert!(c.explain.warnings.iter().any(|w| w.rule == "E11"));
}

#[test]
fn non_linux_images_unsupported() {
    let img = image_with(json!({"os": "windows"}), json!({"Cmd": ["cmd"]}));
    let err = convert::convert(&img, &Overrides::default(), &UserDb::default()).expect_err("windows");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn explain_record_serializes() {
    let c = convert_ok(&image(json!({"Cmd": ["sh"], "User": "app"})), &Overrides::default(), &users());
    let text = serde_json::to_string(&c.explain).expect("explain is serde");
    let back: convert::Explain = serde_json::from_str(&text).expect("round trip");
    assert_eq!(back, c.explain);
    assert!(text.contains("\"source\":\"default\"") && text.contains("\"rule\":\"H7\""));
}

#[test]
fn overrides_are_serde_with_defaults() {
    // The API and CLI pass overrides as JSON; missing fields take Overrides::default().
    let o: Overrides = serde_json::from_value(json!({"args": ["x"], "env": ["A=1"]})).expect("partial overrides");
    assert_eq!(o.args.as_deref(), Some(&["x".to_string()][..]));
    assert!(o.include_optional);
    let back: Overrides = serde_json::from_str(&serde_json::to_string(&o).expect("ser")).expect("de");
    assert_eq!(back, o);
}
