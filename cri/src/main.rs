//! The `carrackd` binary.
fn main() {
    eprintln!("carrackd: not built yet");
    std::process::exit(1);
}
