//! Image reference, ref name, layout reference, digest and platform strings as the CLI and the API take them.
//! What parses must print back to something that parses to the same value.
#![no_main]
// libfuzzer-sys's fuzz_target! writes files by path (its own, outside kiln).
#![allow(clippy::disallowed_methods)]

use kiln::digest::Digest;
use kiln::image::{split_layout_ref, Platform, RefName, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = Reference::parse(s) {
        let again = Reference::parse(&r.to_string()).expect("a printed reference parses");
        assert_eq!(again.to_string(), r.to_string());
    }
    if let Ok(n) = RefName::parse(s) {
        assert_eq!(n.as_str(), s);
        assert_eq!(RefName::parse(&n.to_string()).expect("a printed ref name parses").as_str(), s);
    }
    let (path, reference) = split_layout_ref(s);
    assert!(path.len() + reference.len() <= s.len());
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(Digest::parse(d.as_str()).expect("a digest parses again"), d);
    }
    if let Ok(p) = Platform::parse(s) {
        let again = Platform::parse(&p.to_string()).expect("a printed platform parses");
        assert_eq!(again, p);
        // A platform always matches itself.
        assert!(p.rank(&p).is_some(), "{p} does not match itself");
    }
});
