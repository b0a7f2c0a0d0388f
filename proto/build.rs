//! Compiles `proto/tether.proto` with prost. Needs `protoc` (Debian: protobuf-compiler);
//! `PROTOC` may point at another one.

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/tether.proto");
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_protos(&["proto/tether.proto"], &["proto"]).map_err(|e| {
        std::io::Error::other(format!(
            "compiling proto/tether.proto failed ({e}); install protoc (apt-get install protobuf-compiler) or set PROTOC"
        ))
    })
}
