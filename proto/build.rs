//! Compiles every `.proto` file of the buf module with protox (no system `protoc`).
//!
//! The Google and Envoy subsets are compiled as imports of the redline files. The encoded descriptor set is
//! written next to the generated code because it keeps extension options (`google.api.http`), which
//! reflection and the gateway's route table need and which `prost_types` would drop.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Only existing paths: Cargo treats a missing one as changed on every build.
    for dir in ["redline", "envoy", "google"] {
        if Path::new(dir).exists() {
            println!("cargo:rerun-if-changed={dir}");
        }
    }

    let mut roots = Vec::new();
    for dir in ["redline", "envoy/service"] {
        collect_protos(Path::new(dir), &mut roots)?;
    }
    roots.sort();

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&roots)?;
    std::fs::write(
        out.join("redline_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .include_file("_includes.rs")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

fn collect_protos(dir: &Path, into: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            into.push(path);
        }
    }
    Ok(())
}
