//! The `carrack-shim` binary.
fn main() {
    eprintln!("carrack-shim: not built yet");
    std::process::exit(1);
}
