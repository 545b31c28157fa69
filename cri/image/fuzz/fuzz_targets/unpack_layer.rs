//! Unpacks arbitrary bytes (plain, gzip or zstd tar) into a fresh directory
//! and checks nothing appeared outside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = std::env::temp_dir().join(format!("carrack-fuzz-unpack-{}", std::process::id()));
    let dest = base.join("snapshot");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&dest).unwrap();
    let _ = carrack_image::unpack::unpack_layer("sha256:fuzz", data, &dest);
    // Only the snapshot directory may exist in `base`.
    let names: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("snapshot")],
        "wrote outside the snapshot"
    );
    let _ = std::fs::remove_dir_all(&base);
});
