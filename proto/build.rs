//! Generates the shim API from `shim.proto` and the CRI v1 API from
//! `cri/v1/api.proto` (needs `protoc`, Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=shim.proto");
    println!("cargo:rerun-if-changed=cri/v1/api.proto");
    tonic_prost_build::configure().compile_protos(&["shim.proto"], &["."])?;
    // carrackd keeps CRI configs in its store as JSON (serde), as the
    // k8s-cri crate derived it: the same field names, and every field
    // defaulted so that a record written before a field existed still reads.
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .field_attribute(
            ".runtime.v1.KeyValue.value",
            "#[serde(with = \"crate::env_value\")]",
        )
        .compile_protos(&["cri/v1/api.proto"], &["cri/v1"])?;
    Ok(())
}
