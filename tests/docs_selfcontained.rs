#![allow(clippy::disallowed_methods)] // reads the repository's own files by path
//! The repository explains itself: no tracked file sends a reader to the sibling `shared` directory the
//! project started from, and every rule or threat id the code and tests cite is documented in `docs/`.
//!
//! Ids looked for in `src/` and `tests/` (`.rs` files):
//! - checklist rules: a letter `A`–`J` and one or two digits standing alone (`(C3)`, `"H7"`, `F16–F22`), and
//!   test names that start with such ids in lower case (`fn c3_…`, `fn e10_e11_…`). Each must be the id of a
//!   row of `docs/conversion.md` (a table line starting `| C3 |`);
//! - advisories: `CVE-2021-29136` / `cve_2021_29136`, `RUSTSEC-2018-0002` / `rustsec_2018_0002`, and
//!   GHSA ids by their first group (`GHSA-9m95`, `ghsa_3cv2` in test names). Each must appear in
//!   `docs/threats.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Tracked files (`git ls-files`), or every file outside `target/` and `.git/` when git is not available.
fn tracked_files() -> Vec<PathBuf> {
    let root = repo();
    if let Ok(out) = std::process::Command::new("git").arg("-C").arg(&root).args(["ls-files", "-z"]).output() {
        if out.status.success() {
            return out
                .stdout
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
                .filter(|p| p.is_file())
                .collect();
        }
    }
    let mut files = Vec::new();
    walk(&root, &mut |p| files.push(p.to_path_buf()));
    files
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if name != "target" && name != ".git" {
                walk(&p, f);
            }
        } else if t.is_file() {
            f(&p);
        }
    }
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    let needle = ["..", "shared"].join("/");
    let mut bad = Vec::new();
    for f in tracked_files() {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if line.contains(&needle) {
                bad.push(format!("{}:{}: {}", rel(&f), i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "references to {needle} (use docs/ instead):\n{}", bad.join("\n"));
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Checklist ids (a letter from A to J, then one or two digits) standing alone in `text`.
fn rule_ids(text: &str, out: &mut BTreeSet<String>) {
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if !(b'A'..=b'J').contains(&c) || (i > 0 && is_word(b[i - 1])) {
            continue;
        }
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let end = i + 1 + digits;
        if (1..=2).contains(&digits) && b[i + 1] != b'0' && (end == b.len() || !is_word(b[end])) {
            out.insert(text[i..end].to_owned());
        }
    }
}

/// Rule ids at the start of test names: `fn f15_…` → `F15`, `fn e10_e11_…` → `E10`, `E11`.
fn test_name_ids(text: &str, out: &mut BTreeSet<String>) {
    for (at, _) in text.match_indices("fn ") {
        if at > 0 && is_word(text.as_bytes()[at - 1]) {
            continue;
        }
        let mut rest = &text[at + 3..];
        loop {
            let b = rest.as_bytes();
            if b.is_empty() || !(b'a'..=b'j').contains(&b[0]) {
                break;
            }
            let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=2).contains(&digits) || b.get(1 + digits) != Some(&b'_') || b[1] == b'0' {
                break;
            }
            out.insert(rest[..1 + digits].to_ascii_uppercase());
            rest = &rest[2 + digits..];
        }
    }
}

/// Advisory ids, normalised to upper case with dashes.
fn advisory_ids(text: &str, out: &mut BTreeSet<String>) {
    // `PREFIX` then groups of `(len, digits only)` joined by `-` (or `_` in test names).
    let forms: [(&str, &[(usize, bool)]); 3] =
        [("CVE", &[(4, true), (0, true)]), ("RUSTSEC", &[(4, true), (4, true)]), ("GHSA", &[(4, false)])];
    let upper = text.to_ascii_uppercase();
    for (prefix, groups) in forms {
        for (at, _) in upper.match_indices(prefix) {
            let b = upper.as_bytes();
            if at > 0 && is_word(b[at - 1]) && b[at - 1] != b'_' {
                continue;
            }
            let mut id = prefix.to_owned();
            let mut pos = at + prefix.len();
            let mut ok = true;
            for &(len, digits_only) in groups {
                if !matches!(b.get(pos), Some(b'-') | Some(b'_')) {
                    ok = false;
                    break;
                }
                pos += 1;
                let n = b[pos..]
                    .iter()
                    .take_while(|c| if digits_only { c.is_ascii_digit() } else { c.is_ascii_alphanumeric() })
                    .count();
                // len 0: any length of at least four (CVE sequence numbers).
                if (len == 0 && n < 4) || (len > 0 && n < len) {
                    ok = false;
                    break;
                }
                let take = if len == 0 { n } else { len };
                id.push('-');
                id.push_str(&upper[pos..pos + take]);
                pos += take;
            }
            if ok {
                out.insert(id);
            }
        }
    }
}

/// Every `.rs` file under `src/` and `tests/`, with its text.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["src", "tests"] {
        walk(&repo().join(dir), &mut |p| {
            if p.extension().is_some_and(|e| e == "rs") {
                if let Ok(text) = std::fs::read_to_string(p) {
                    out.push((rel(p), text));
                }
            }
        });
    }
    out
}

fn read_doc(name: &str) -> String {
    std::fs::read_to_string(repo().join("docs").join(name)).unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

#[test]
fn every_cited_rule_and_threat_id_is_documented() {
    let conversion = read_doc("conversion.md");
    let threats = read_doc("threats.md").to_ascii_uppercase();
    // The rows of conversion.md: `| C3 | …`.
    let mut rows = BTreeSet::new();
    for line in conversion.lines() {
        if let Some(rest) = line.strip_prefix("| ") {
            let id = rest.split(' ').next().unwrap_or("");
            let mut one = BTreeSet::new();
            rule_ids(id, &mut one);
            if one.len() == 1 && one.contains(id) {
                rows.insert(id.to_owned());
            }
        }
    }
    assert!(rows.len() > 100, "docs/conversion.md: only {} rule rows found", rows.len());

    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources() {
        let mut rules = BTreeSet::new();
        rule_ids(&text, &mut rules);
        test_name_ids(&text, &mut rules);
        for id in rules.difference(&rows) {
            missing.entry(format!("rule {id} (not a row of docs/conversion.md)")).or_default().insert(file.clone());
        }
        let mut advisories = BTreeSet::new();
        advisory_ids(&text, &mut advisories);
        for id in advisories.iter().filter(|id| !threats.contains(id.as_str())) {
            missing.entry(format!("advisory {id} (not in docs/threats.md)")).or_default().insert(file.clone());
        }
    }
    let report: Vec<String> = missing
        .iter()
        .map(|(id, files)| format!("{id}: {}", files.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(report.is_empty(), "ids cited but not documented:\n{}", report.join("\n"));
}

#[test]
fn the_id_scanners_find_what_they_should() {
    let mut ids = BTreeSet::new();
    rule_ids("(C3) \"H7\" F16–F22, B2/B3; not AB1, A1x, x9A1, A0, F123 or a1", &mut ids);
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["B2", "B3", "C3", "F16", "F22", "H7"]);
    let mut ids = BTreeSet::new();
    test_name_ids("fn e10_e11_reserved() {} fn h28_x() fn cve_2021_1_x() fn race_a1_x() fn a1b_x()", &mut ids);
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["E10", "E11", "H28"]);
    let mut ids = BTreeSet::new();
    let text = "fn cve_2014_6407_x, RUSTSEC-2018-0002, rustsec_2021_0080, GHSA-9m95-8hx6-7p9v, fn f6_ghsa_3cv2_x";
    advisory_ids(text, &mut ids);
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        ["CVE-2014-6407", "GHSA-3CV2", "GHSA-9M95", "RUSTSEC-2018-0002", "RUSTSEC-2021-0080"]
    );
}
