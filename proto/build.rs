//! Generates the shim API from `shim.proto` (needs `protoc`, Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=shim.proto");
    tonic_prost_build::configure().compile_protos(&["shim.proto"], &["."])?;
    Ok(())
}
