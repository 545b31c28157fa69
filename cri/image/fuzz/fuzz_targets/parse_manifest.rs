//! Parses arbitrary bytes as a manifest, an index and an image config; picks
//! a platform from any index. None of it may panic.
#![no_main]

use carrack_image::manifest::{ManifestDocument, parse_config, parse_manifest, select_platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ManifestDocument::Index(i)) = parse_manifest(data, "sha256:fuzz") {
        let _ = select_platform(&i, "sha256:fuzz");
    }
    let _ = parse_config(data, "sha256:fuzz", 1);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = carrack_image::reference::Reference::parse(s);
    }
});
