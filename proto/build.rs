//! Compiles `proto/ark/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.
//! The file descriptor set is kept for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ark/v1/ark.proto",
        "proto/ark/v1/auth.proto",
        "proto/ark/v1/objects.proto",
        "proto/ark/v1/peer.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("ark_descriptor.bin");
    std::fs::write(&fds_path, prost::Message::encode_to_vec(&fds))?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&fds_path)
        // Object and chunk bytes are passed on without copying.
        .bytes([
            ".ark.v1.PutObjectRequest.data",
            ".ark.v1.GetObjectResponse.data",
            ".ark.v1.ChunkPut.data",
            ".ark.v1.PeerResponse.chunk_data",
            ".ark.v1.SnapshotChunk.data",
        ])
        .skip_protoc_run()
        .compile_fds(fds)?;
    Ok(())
}
