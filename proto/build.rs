//! Compiles `proto/aerie.proto` with protox (a Rust protobuf compiler), so
//! building Aerie needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/aerie.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
