//! The part of containerd's filter syntax that `List` accepts: what containerd itself sends a snapshotter
//! (`labels."containerd.io/snapshot.ref"==X,parent==Y` from CRI's remote-snapshot path, and none from its
//! GC) and the plain forms around it.
//!
//! A request's filters are alternatives (a snapshot matching any one is listed; none lists every snapshot);
//! each filter is a `,`-separated conjunction of selectors `FIELD`, `FIELD==VALUE` or `FIELD!=VALUE`. FIELD is
//! `name`, `parent`, `kind` or `labels.KEY`, each part bare (letters, digits, `_`, `-`) or a double-quoted
//! string with Go escapes (`labels."containerd.io/snapshot.ref"`; a bare `labels.a.b` is the key `a.b`, as in
//! containerd). VALUE is quoted the same way, or bare up to the next `,`. A FIELD alone matches a non-empty
//! value (a present label). Anything else — `~=` regular expressions, `/…/` or `|…|` quotes, other fields —
//! is refused with [`Error::Filter`] (`InvalidArgument`), never guessed at.
//!
//! May use: its parent and `snapshot::Kind`.

use super::super::{Error, Result};
use super::CtrInfo;
use crate::snapshot::Kind;

/// Parsed `List` filters (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(Vec<Vec<Selector>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    field: Field,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

impl Filters {
    /// Parses each of `filters`; an empty string matches everything, as in containerd.
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let mut out = Vec::new();
        for f in filters {
            let selectors =
                Parser { text: f, pos: 0 }.filter().map_err(|reason| Error::Filter { filter: f.clone(), reason })?;
            out.push(selectors);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, info: &CtrInfo) -> bool {
        self.0.is_empty() || self.0.iter().any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &CtrInfo) -> bool {
        let kind = match info.kind {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        };
        let value = match &self.field {
            Field::Name => Some(info.name.as_str()),
            Field::Parent => Some(info.parent.as_deref().unwrap_or("")),
            Field::Kind => Some(kind),
            Field::Label(k) => info.labels.get(k).map(String::as_str),
        };
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Eq(want) => value.unwrap_or("") == want,
            Op::Ne(want) => value.unwrap_or("") != want,
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

type Parsed<T> = std::result::Result<T, String>;

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_space();
        self.pos == self.text.len()
    }

    fn filter(mut self) -> Parsed<Vec<Selector>> {
        let mut out = Vec::new();
        if self.at_end() {
            return Ok(out);
        }
        loop {
            out.push(self.selector()?);
            if self.at_end() {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(format!("expected `,` or the end at byte {}", self.pos));
            }
        }
    }

    fn selector(&mut self) -> Parsed<Selector> {
        let mut parts = vec![self.part()?];
        while self.eat(".") {
            parts.push(self.part()?);
        }
        let field = match parts[0].as_str() {
            "name" if parts.len() == 1 => Field::Name,
            "parent" if parts.len() == 1 => Field::Parent,
            "kind" if parts.len() == 1 => Field::Kind,
            "labels" if parts.len() > 1 => Field::Label(parts[1..].join(".")),
            _ => return Err(format!("unknown field {:?} (name, parent, kind, labels.KEY)", parts.join("."))),
        };
        let op = if self.eat("==") {
            Op::Eq(self.value()?)
        } else if self.eat("!=") {
            Op::Ne(self.value()?)
        } else if self.eat("~=") {
            return Err("regular expressions (~=) are not supported".into());
        } else {
            Op::Present
        };
        Ok(Selector { field, op })
    }

    /// A field path part: bare, or quoted.
    fn part(&mut self) -> Parsed<String> {
        self.skip_space();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("expected a field name at byte {}", self.pos));
        }
        let part = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(part)
    }

    fn value(&mut self) -> Parsed<String> {
        self.skip_space();
        match self.rest().chars().next() {
            Some('"') => self.quoted(),
            Some('/') | Some('|') => Err("only double quotes are supported around a value".into()),
            _ => {
                let len = self.rest().find(',').unwrap_or(self.rest().len());
                let v = self.rest()[..len].trim_end().to_owned();
                if v.contains(['"', '=']) {
                    return Err(format!("value {v:?} needs double quotes"));
                }
                self.pos += len;
                Ok(v)
            }
        }
    }

    /// A double-quoted string with Go's simple escapes.
    fn quoted(&mut self) -> Parsed<String> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    other => return Err(format!("unsupported escape {other:?} in the string at byte {start}")),
                },
                c => out.push(c),
            }
        }
        Err(format!("unterminated string at byte {start}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn info(name: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> CtrInfo {
        CtrInfo {
            name: name.into(),
            parent: parent.map(Into::into),
            kind,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: 0,
            updated: 0,
        }
    }

    fn parse(fs: &[&str]) -> Filters {
        Filters::parse(&fs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn what_containerd_sends() {
        let base = info("k8s.io/2/sha256:aa", None, Kind::Committed, &[("containerd.io/snapshot.ref", "sha256:aa")]);
        let top = info(
            "k8s.io/4/sha256:bb",
            Some("k8s.io/2/sha256:aa"),
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:bb")],
        );
        let f = parse(&[r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="""#]);
        assert!(f.matches(&base) && !f.matches(&top));
        let f = parse(&[r#"labels."containerd.io/snapshot.ref"=="sha256:bb",parent=="k8s.io/2/sha256:aa""#]);
        assert!(!f.matches(&base) && f.matches(&top));
        // None: everything; alternatives: any.
        assert!(parse(&[]).matches(&base) && parse(&[""]).matches(&top));
        let f = parse(&["name==k8s.io/2/sha256:aa", "kind==active"]);
        assert!(f.matches(&base) && !f.matches(&top));
    }

    #[test]
    fn plain_forms() {
        let a = info("a", Some("p"), Kind::Active, &[("x.y", "1"), ("z", "")]);
        assert!(parse(&["labels.x.y"]).matches(&a));
        assert!(!parse(&["labels.z"]).matches(&a));
        assert!(parse(&[r#" kind == active , labels."x.y" != "2" "#]).matches(&a));
        assert!(parse(&["parent"]).matches(&a));
        assert!(!parse(&["parent==q"]).matches(&a));
        assert!(parse(&[r#"name=="a""#]).matches(&a));
    }

    #[test]
    fn other_syntax_is_refused() {
        for bad in [
            "name~=a.*",
            "labels",
            "size==3",
            "name==/a/",
            "name==a b==c",
            r#"labels."unterminated==x"#,
            "name==a,,",
            "name==\"a\" x",
            ".name",
        ] {
            let e = Filters::parse(&[bad.to_string()]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
            assert!(e.to_string().starts_with("list filter "), "{bad}: {e}");
        }
    }
}
