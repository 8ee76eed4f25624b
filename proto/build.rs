fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("hourcell_descriptor.bin"))
        .compile_protos(&["hourcell/v1/hourcell.proto"], &["."])?;
    println!("cargo:rerun-if-changed=hourcell/v1/hourcell.proto");
    Ok(())
}
