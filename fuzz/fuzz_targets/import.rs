//! `certplane_import::validate` on arbitrary PEM text: it never panics, and whatever it accepts
//! holds up (a leaf first, covering the hostname, no key material in the chain).

#![no_main]

use certplane_domain::Hostname;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the input splits into the two fields, the rest is text.
    let Some((&split, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let cut = (usize::from(split) * text.len() / 255).min(text.len());
    let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let (fullchain, key) = text.split_at(cut);
    let hostname = Hostname::parse("www.example.com").expect("a valid hostname");
    for (chain, key) in [(fullchain, key), (text, text)] {
        if let Ok(bundle) = certplane_import::validate(chain, key, &hostname, 1_800_000_000) {
            assert!(!bundle.chain.is_empty());
            assert!(bundle.not_before <= 1_800_000_000 && 1_800_000_000 <= bundle.not_after);
            assert!(bundle.sans.iter().any(|s| certplane_import::covers(s, &hostname)));
            assert!(!bundle.chain_pem().contains("PRIVATE KEY"));
        }
    }
});
