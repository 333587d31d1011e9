//! Compiles the voice's own ONNX subset (`proto/onnx.proto`) with protox, so no `protoc` is
//! needed to build.

use std::{io, path::PathBuf};

fn main() -> io::Result<()> {
    // Read when the script runs, not when it was compiled: a script binary reused from another
    // checkout must still read this one's files.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map_err(io::Error::other)?;
    let dir = PathBuf::from(manifest).join("proto");
    let file = dir.join("onnx.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&dir]).map_err(io::Error::other)?;
    prost_build::Config::new()
        // Large weight blobs are sliced out of the file's buffer instead of copied.
        .bytes(["."])
        .compile_fds(descriptors)
}
