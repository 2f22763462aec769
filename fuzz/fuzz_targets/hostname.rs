//! `Hostname::parse` on arbitrary input: it never panics, and whatever it accepts satisfies the
//! type's promises and parses again to itself.

#![no_main]

use certplane_domain::Hostname;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(h) = Hostname::parse(text) else { return };
    let name = h.as_str();
    assert!(name.len() <= 253, "{name:?} is too long");
    assert_eq!(h.is_wildcard(), name.starts_with("*."));
    assert!(!h.base().contains('*'), "{name:?}");
    let labels: Vec<&str> = h.base().split('.').collect();
    assert!(labels.len() >= 2, "{name:?} is not fully qualified");
    for label in labels {
        assert!((1..=63).contains(&label.len()), "{name:?}");
        assert!(
            label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name:?}"
        );
        assert!(!label.starts_with('-') && !label.ends_with('-'), "{name:?}");
    }
    let again = Hostname::parse(name).expect("a parsed hostname parses again");
    assert_eq!(again, h, "parsing is idempotent");
    assert!(!(h.is_apex() && h.is_wildcard()));
});
