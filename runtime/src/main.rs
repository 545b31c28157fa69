//! The `carrack-runtime` command line (runc's contract).
fn main() {
    eprintln!("carrack-runtime: not built yet");
    std::process::exit(1);
}
