//! Compiles the voice's own ONNX subset (`proto/onnx.proto`) with protox, so no `protoc` is
//! needed to build.

use std::{io, path::PathBuf};

fn main() -> io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let file = dir.join("onnx.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&dir]).map_err(io::Error::other)?;
    prost_build::Config::new()
        // Large weight blobs are sliced out of the file's buffer instead of copied.
        .bytes(["."])
        .compile_fds(descriptors)
}
