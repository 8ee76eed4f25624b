fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The public API and its descriptor set (what reflection lists).
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("hourcell_descriptor.bin"))
        .compile_protos(&["hourcell/v1/hourcell.proto"], &["."])?;
    // Node-to-node RPCs, in their own package; public types they use are
    // the ones generated above.
    // Its own directory: generating it also writes an `hourcell.v1.rs`
    // (with the public types left out), which must not replace the one
    // above.
    let internal = out.join("internal");
    std::fs::create_dir_all(&internal)?;
    tonic_prost_build::configure()
        .out_dir(&internal)
        .file_descriptor_set_path(internal.join("internal_descriptor.bin"))
        .extern_path(".hourcell.v1", "crate::v1")
        .compile_protos(&["hourcell/internal/v1/internal.proto"], &["."])?;
    println!("cargo:rerun-if-changed=hourcell/v1/hourcell.proto");
    println!("cargo:rerun-if-changed=hourcell/internal/v1/internal.proto");
    Ok(())
}
