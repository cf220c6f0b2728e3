//! Differential fuzzer for stacked layers (stable Rust, seeded, no extra crate): random stacks of 2–6 small
//! layers over the names `a`, `b`, `c` (depth ≤ 3, plus the host victim's path as seen inside the rootfs) —
//! directories, files, relative / absolute / `..`-climbing symlinks (to `/`, into the rootfs, at the host
//! victim), hard links, whiteouts, opaque markers, FIFOs, char devices, `./` root entries, type flips across
//! layers, owners 0 / 1000 / 4242, modes with setuid, 0700, 0777, and `user.*` xattrs.
//!
//! Every stack goes through `kiln unpack`, the bundle engine in-process with the overlay and with the native
//! backend (the code kilnd runs), and `umoci unpack`; then (a second batch, same stacks) through `kiln unpack`
//! and two real kilnd daemons (`--snapshotter overlayfs` / `native`, via `kiln image import` + `kiln bundle
//! create`). All kiln paths must agree entry for entry (or all fail), umoci must agree unless a known class
//! explains it, and the host victim must be untouched (`common::stack`). Every stack is independent (snapshots
//! are garbage-collected after each). Failures are grouped by signature; the first stack of each group is
//! shrunk (layers, then entries, then attributes) and printed as `LayerBuilder` code.
//!
//! Measured on the 2-core debug VM: 300 stacks take ~21 s in-process (+ umoci) and ~44 s through the daemons;
//! shrinking adds 1–5 s per failure group.
//!
//! Environment: `KILN_FUZZ_SEED=S` (default 0x6b696c6e), `KILN_FUZZ_STACKS=N` (default 300),
//! `KILN_FUZZ_DAEMON_STACKS=M` (how many of them also go through the daemons; default all),
//! `KILN_FUZZ_UMOCI=0` (leave umoci out of the in-process batch), `KILN_FUZZ_START=K` (begin at stack K),
//! `KILN_FUZZ_ONLY=i` (just stack i of the seed, e.g. to reproduce), `KILN_FUZZ_SHRINK=K` (groups to shrink,
//! default 12). `stack_fuzz_long` (ignored) runs 3000 stacks, all of them through the daemons too.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::layer::LayerBuilder;
use common::stack::{rust_code, shrink, Failure, Harness, Paths};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }
}

const NAMES: [&str; 3] = ["a", "b", "c"];
const OWNERS: [(u64, u64); 4] = [(0, 0), (1000, 1000), (4242, 4242), (0, 1000)];

struct Gen<'a> {
    r: Rng,
    /// The victim's absolute path.
    victim: &'a str,
    /// Paths made as regular files so far (hard link targets).
    files: Vec<String>,
}

impl Gen<'_> {
    fn shadow(&self) -> String {
        self.victim.trim_start_matches('/').to_owned()
    }

    /// `a/b/c`-style, depth 1–3; sometimes inside the victim's in-rootfs path, sometimes spelled `./x` or `/x`.
    fn path(&mut self) -> String {
        let depth = 1 + self.r.below(3);
        let mut p: Vec<String> = (0..depth).map(|_| self.r.pick(&NAMES).to_owned()).collect();
        if self.r.one_in(8) {
            p.insert(0, self.shadow());
        }
        let p = p.join("/");
        match self.r.below(24) {
            0 => format!("./{p}"),
            1 => format!("/{p}"),
            _ => p,
        }
    }

    fn link_target(&mut self) -> String {
        let v = self.victim.to_owned();
        let climb = "../".repeat(16);
        match self.r.below(20) {
            0 => "a".into(),
            1 => "b/c".into(),
            2 => "../a".into(),
            3 => "../../b/a".into(),
            4 => ".".into(),
            5 => "..".into(),
            6 => "zz".into(),
            7 => "/".into(),
            8 => "/a".into(),
            9 => "/c/a/b".into(),
            10 | 11 => v,
            12 => format!("{v}/a"),
            13 => format!("{v}/x"),
            14 => format!("{v}/a/b"),
            15 | 16 => format!("{}{v}", climb.trim_end_matches('/')),
            17 => format!("{climb}a"),
            18 => climb,
            _ => self.path(),
        }
    }

    fn mode_dir(&mut self) -> u32 {
        self.r.pick(&[0o755, 0o755, 0o700, 0o777, 0o750, 0o711, 0o1777, 0o2755, 0o4755])
    }

    fn mode_file(&mut self) -> u32 {
        self.r.pick(&[0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o777, 0o700, 0o444, 0o6711])
    }

    fn attrs(&mut self, mut l: LayerBuilder, li: usize, ei: usize, xattr_odds: u64) -> LayerBuilder {
        if self.r.one_in(2) {
            let (u, g) = self.r.pick(&OWNERS);
            l = l.owner(u, g);
        }
        if self.r.one_in(xattr_odds) {
            l = l.xattr("user.kiln", format!("L{li}E{ei}").as_bytes());
        }
        l
    }

    fn layer(&mut self, li: usize) -> LayerBuilder {
        let mut l = LayerBuilder::new();
        let n = 1 + self.r.below(8);
        for ei in 0..n as usize {
            l = match self.r.below(100) {
                0..=19 => {
                    let (p, m) = (self.path(), self.mode_dir());
                    let l = l.dir(&p, m);
                    self.attrs(l, li, ei, 3)
                }
                20..=39 => {
                    let p = self.path();
                    let content: &[u8] = self.r.pick(&[&b""[..], b"x", b"hello\n", &[7u8; 700]]);
                    let m = self.mode_file();
                    let l = l.file(&p, content, m);
                    self.files.push(p);
                    self.attrs(l, li, ei, 4)
                }
                40..=53 => {
                    let (p, t) = (self.path(), self.link_target());
                    let l = l.symlink(&p, &t);
                    if self.r.one_in(3) {
                        l.owner(1000, 1000)
                    } else {
                        l
                    }
                }
                54..=59 => {
                    let p = self.path();
                    let t = if !self.files.is_empty() && !self.r.one_in(5) {
                        let i = self.r.below(self.files.len() as u64) as usize;
                        self.files[i].clone()
                    } else {
                        self.path()
                    };
                    l.hardlink(&p, &t)
                }
                60..=71 => {
                    let p = self.path();
                    l.whiteout(&p)
                }
                72..=78 => {
                    let p = self.path();
                    l.opaque(&p)
                }
                79..=81 => {
                    let p = self.path();
                    l.fifo(&p)
                }
                82..=84 => {
                    let p = self.path();
                    let (a, b) = self.r.pick(&[(1, 3), (1, 5)]);
                    l.char_device(&p, a, b)
                }
                85..=87 => {
                    let root = self.r.pick(&["./", ".", "/"]);
                    let m = self.mode_dir();
                    let l = l.dir(root, m);
                    self.attrs(l, li, ei, 2)
                }
                88..=96 => {
                    // The victim's path inside the rootfs: absolute links to the victim then resolve in it.
                    let sub = self.r.pick(&["", "/a", "/x", "/a/b"]);
                    let m = self.mode_dir();
                    let l = l.dir(&format!("{}{sub}", self.shadow()), m);
                    self.attrs(l, li, ei, 3)
                }
                97 => {
                    let p = self.path();
                    l.file(&format!("a/../{p}"), b"dotdot", 0o644)
                }
                _ => {
                    let p = self.path();
                    l.file(&p, b"", 0o644).xattr("user.overlay.opaque", b"y")
                }
            };
        }
        l
    }
}

/// Stack `i` of `seed`, for a victim at `victim`: the same (seed, i) gives the same structure for any victim.
fn stack(seed: u64, i: u64, victim: &str) -> Vec<LayerBuilder> {
    let mut g = Gen { r: Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)), victim, files: vec![] };
    let n = 2 + g.r.below(5) as usize;
    (0..n).map(|li| g.layer(li)).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        }
        Err(_) => default,
    }
}

struct Found {
    index: u64,
    layers: Vec<LayerBuilder>,
    failure: Failure,
    count: usize,
}

/// Runs stacks `indices` of `seed` through `h`; records the first stack of each failure signature.
fn batch(h: &mut Harness, seed: u64, indices: &[u64], found: &mut BTreeMap<(u8, String), Found>) {
    let t = Instant::now();
    for (n, &i) in indices.iter().enumerate() {
        if n > 0 && n % 1000 == 0 {
            // Long runs (with --nocapture) show where they are.
            eprintln!(
                "stack fuzzer: {n}/{} stacks, {} failure signature(s), {:.0?}",
                indices.len(),
                found.len(),
                t.elapsed()
            );
        }
        let layers = stack(seed, i, h.victim.path());
        let r = h.run(&layers);
        for f in r.failures(&layers) {
            if !found.contains_key(&(f.priority(), f.signature())) {
                // The whole failure now, not only at the end: a long run that is stopped keeps what it found.
                eprintln!("stack fuzzer: new failure at KILN_FUZZ_SEED={seed:#x} KILN_FUZZ_ONLY={i}: {f}");
            }
            found.entry((f.priority(), f.signature())).and_modify(|e| e.count += 1).or_insert_with(|| Found {
                index: i,
                layers: layers.clone(),
                failure: f.clone(),
                count: 1,
            });
        }
    }
}

fn report(label: &str, h: &mut Harness, seed: u64, found: &BTreeMap<(u8, String), Found>, shrink_max: usize) -> String {
    let mut out = String::new();
    for (n, ((_, sig), f)) in found.iter().enumerate() {
        out.push_str(&format!(
            "\n=== [{label}] {sig} — {} stack(s), first: KILN_FUZZ_SEED={seed:#x} KILN_FUZZ_ONLY={}\n",
            f.count, f.index
        ));
        if n < shrink_max {
            let t = Instant::now();
            let small = shrink(h, &f.layers, sig);
            let r = h.run(&small);
            let failure = r.failures(&small).into_iter().find(|x| &x.signature() == sig);
            out.push_str(&format!(
                "minimal stack ({} layer(s), {} entries; shrunk in {:.1?}):\n{}",
                small.len(),
                small.iter().map(|l| l.entries.len()).sum::<usize>(),
                t.elapsed(),
                rust_code(&small, h.victim.path())
            ));
            match failure {
                Some(x) => out.push_str(&format!("fails with: {x}\n")),
                None => {
                    out.push_str(&format!("(the minimal stack no longer fails; original failure: {})\n", f.failure))
                }
            }
            out.push_str(&r.summary());
        } else {
            out.push_str(&format!("not shrunk; original failure: {}\n", f.failure));
            out.push_str(&rust_code(&f.layers, h.victim.path()));
        }
    }
    out
}

fn fuzz(stacks: u64) {
    let seed = env_u64("KILN_FUZZ_SEED", 0x6b69_6c6e);
    let stacks = env_u64("KILN_FUZZ_STACKS", stacks);
    let daemon_stacks = env_u64("KILN_FUZZ_DAEMON_STACKS", stacks).min(stacks);
    let shrink_max = env_u64("KILN_FUZZ_SHRINK", 12) as usize;
    let only = std::env::var("KILN_FUZZ_ONLY").ok().map(|_| env_u64("KILN_FUZZ_ONLY", 0));
    let (all, slice): (Vec<u64>, Vec<u64>) = match only {
        Some(i) => (vec![i], vec![i]),
        None => {
            // KILN_FUZZ_START=K: stacks K.. of the seed (to split a long run across processes).
            let start = env_u64("KILN_FUZZ_START", 0);
            ((start..start + stacks).collect(), (start..start + daemon_stacks).collect())
        }
    };

    // KILN_FUZZ_UMOCI=0 leaves umoci out of the in-process batch (for long runs: it is the slowest path).
    let umoci = std::env::var("KILN_FUZZ_UMOCI").map_or(true, |v| v != "0");
    let Some(mut lib) = Harness::new(Paths { umoci, ..Paths::LIBRARY }) else { return };
    let t = Instant::now();
    let mut found = BTreeMap::new();
    batch(&mut lib, seed, &all, &mut found);
    println!("{} stacks through kiln unpack + engine (overlayfs, native) + umoci: {:.1?}", all.len(), t.elapsed());

    let mut daemons = Harness::new(Paths { daemons: true, library: false, umoci: false }).expect("daemons");
    let t = Instant::now();
    let mut found_d = BTreeMap::new();
    batch(&mut daemons, seed, &slice, &mut found_d);
    println!("{} stacks through kiln unpack + kilnd (overlayfs, native): {:.1?}", slice.len(), t.elapsed());

    if found.is_empty() && found_d.is_empty() {
        return;
    }
    let t = Instant::now();
    let mut msg = format!(
        "stack fuzzer (seed {seed:#x}): {} failure signature(s) in-process, {} through the daemons\n",
        found.len(),
        found_d.len()
    );
    msg.push_str(&report("engine", &mut lib, seed, &found, shrink_max));
    msg.push_str(&report("kilnd", &mut daemons, seed, &found_d, shrink_max.min(4)));
    println!("{msg}\n(reporting and shrinking took {:.1?})", t.elapsed());
    panic!("{msg}");
}

/// The default batch: 300 stacks in-process (+ umoci), and the same 300 through the daemons.
#[test]
fn stack_fuzz_kiln_paths_agree_and_host_is_untouched() {
    fuzz(300);
}

/// A long run: `cargo test --test stack_fuzz -- --ignored` (scale with KILN_FUZZ_STACKS / KILN_FUZZ_SEED).
#[test]
#[ignore]
fn stack_fuzz_long() {
    fuzz(3000);
}
