//! Compiles `gateway/v1/*.proto` with protox, a pure-Rust protobuf compiler: no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["gateway/v1/config.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // Snapshot content is hashed over its encoding: its maps must encode in one order (prost's default HashMap
    // would not).
    tonic_prost_build::configure()
        .btree_map(".gateway.v1.Model.price_per_image")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
