//! Differential test (F14): for generated layers without whiteouts, the tree kiln writes equals what GNU
//! `tar -x` writes from the same stream — types, modes, owners, sizes, content hashes, xattrs, link targets and
//! mtimes.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::layer::{apply_tar, describe, LayerBuilder};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A layer of a few hundred entries exercising every type and header form kiln and GNU tar both support.
fn generate(seed: u64, root: bool) -> LayerBuilder {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut l = LayerBuilder::new();
    let mut dirs = vec![String::new()];
    let mut files: Vec<String> = vec![];
    let long_component = "L".repeat(120);
    for i in 0..300 {
        let parent = dirs[r.below(dirs.len() as u64) as usize].clone();
        let name = if r.below(25) == 0 { format!("{long_component}{i}") } else { format!("e{i}") };
        let path = if parent.is_empty() { name } else { format!("{parent}/{name}") };
        let mtime = 1_000_000_000 + r.below(700_000_000);
        match r.below(10) {
            0 | 1 => {
                let mode = [0o755, 0o700, 0o750, 0o1777, 0o2775][r.below(5) as usize];
                l = l.dir(&path, mode).mtime(mtime);
                dirs.push(path);
            }
            2 => {
                let target = match r.below(4) {
                    0 => "../relative/target".to_string(),
                    1 => "/absolute/target".to_string(),
                    2 => format!("/{}", "t".repeat(150)),
                    _ => files.first().cloned().unwrap_or_else(|| "dangling".into()),
                };
                l = l.symlink(&path, &target).mtime(mtime);
            }
            3 if !files.is_empty() => {
                let target = files[r.below(files.len() as u64) as usize].clone();
                l = l.hardlink(&path, &target);
            }
            4 => {
                l = l.fifo(&path).mtime(mtime);
            }
            5 if root => {
                l = l.char_device(&path, 1 + r.below(10) as u32, r.below(200) as u32).mtime(mtime);
            }
            _ => {
                let size = [0usize, 1, 511, 512, 513, 4096, 70_000][r.below(7) as usize];
                let content: Vec<u8> = (0..size).map(|k| (k as u64 ^ seed) as u8).collect();
                let mode = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444][r.below(6) as usize];
                l = l.file(&path, &content, mode).mtime(mtime);
                if r.below(5) == 0 {
                    l = l.xattr("user.kiln.test", format!("v{i}").as_bytes());
                }
                if r.below(7) == 0 {
                    l = l.pax("mtime", format!("{mtime}.{:09}", r.below(1_000_000_000)).as_bytes());
                }
                files.push(path);
            }
        }
        if root && r.below(3) == 0 {
            let (uid, gid) = [(0, 0), (1000, 1000), (65534, 65534), (100_000, 100_001)][r.below(4) as usize];
            l = l.owner(uid, gid);
        }
    }
    // Archive order as tar writers produce it (each directory followed by its contents): GNU tar applies a
    // directory's delayed mtime when extraction leaves it. Hardlinks stay only when their target comes first.
    l.entries.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    let mut seen = std::collections::HashSet::new();
    l.entries.retain(|e| {
        let keep = match &e.kind {
            common::layer::Kind::Hardlink(t) => seen.contains(t),
            _ => true,
        };
        if keep {
            seen.insert(e.path.clone());
        }
        keep
    });
    // A read-only directory filled by later entries, and a directory entry after its children.
    l = l.dir("ro", 0o555).file("ro/inside", b"x", 0o644).dir("late", 0o711).mtime(1_111_111_111);
    l = l.file("late/child", b"c", 0o644).dir("late", 0o755).mtime(1_222_222_222);
    l
}

fn gnu_extract(tar: &[u8], dir: &Path) {
    let mut child = Command::new("tar")
        .args(["-x", "-p", "--same-owner", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-f", "-", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tar");
    child.stdin.take().unwrap().write_all(tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tar -x: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn differential_kiln_equals_gnu_tar_x() {
    if !common::require_tool("tar") {
        return;
    }
    let root = nix::unistd::geteuid().is_root();
    for seed in 1..=6u64 {
        let tar = generate(seed, root).build();
        let d = common::scratch();
        let (k, g) = (d.path().join("kiln"), d.path().join("gnu"));
        std::fs::create_dir(&k).unwrap();
        std::fs::create_dir(&g).unwrap();
        apply_tar(&tar, &k, &kiln::layer::Options::default()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        gnu_extract(&tar, &g);
        let (kt, gt) = (describe(&k, true), describe(&g, true));
        assert!(kt.len() > 250, "seed {seed}: only {} objects", kt.len());
        if kt != gt {
            for (p, v) in &kt {
                if gt.get(p) != Some(v) {
                    eprintln!("seed {seed} {p}:\n  kiln {v}\n  gnu  {:?}", gt.get(p));
                }
            }
            for p in gt.keys().filter(|p| !kt.contains_key(*p)) {
                eprintln!("seed {seed} {p}: only in GNU tar's tree");
            }
            panic!("seed {seed}: trees differ");
        }
    }
}

#[test]
fn differential_compressed_forms_give_the_same_tree() {
    let tar = generate(42, nix::unistd::geteuid().is_root()).build();
    let mut trees = vec![];
    for c in [kiln::image::Compression::Gzip, kiln::image::Compression::Zstd] {
        let blob = match c {
            kiln::image::Compression::Gzip => common::layer::gzip(&tar),
            _ => common::layer::zstd(&tar),
        };
        let d = common::scratch();
        let k = d.path().join("k");
        std::fs::create_dir(&k).unwrap();
        common::layer::apply_blob(&blob, c, &common::layer::sha256(&tar), &k, &kiln::layer::Options::default())
            .unwrap();
        trees.push(describe(&k, true));
    }
    assert_eq!(trees[0], trees[1]);
}
