//! Where the workspace and its built binaries are.

use std::env;
use std::path::{Path, PathBuf};

/// The workspace root (the directory of the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // This crate lives in `<root>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("{} has no parent", env!("CARGO_MANIFEST_DIR")))
}

/// The directory holding the binaries of the profile the tests were built with, usually
/// `target/debug`.
///
/// Found from the running test executable (`<dir>/deps/<test>-<hash>`), so it follows
/// `CARGO_TARGET_DIR`, `--target <triple>` and the profile without being told. Outside a cargo
/// test executable it falls back to `$CARGO_TARGET_DIR/debug` or `<root>/target/debug`.
pub fn target_profile_dir() -> PathBuf {
    if let Ok(exe) = env::current_exe() {
        if let Some(deps) = exe.parent() {
            if deps.file_name().is_some_and(|n| n == "deps") {
                if let Some(dir) = deps.parent() {
                    return dir.to_path_buf();
                }
            }
        }
    }
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    target.join("debug")
}

/// Path of a built workspace binary, e.g. `bin("osprey")` or `bin("osprey-agent")`.
///
/// Cargo does not build other packages' binaries for this crate's tests, so they must have been
/// built before: `cargo build --workspace --bins` (tests/run.sh does).
///
/// # Panics
///
/// When the binary does not exist, with a message saying how to build it.
pub fn bin(name: &str) -> PathBuf {
    let path = target_profile_dir().join(format!("{name}{}", env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace --bins` first \
             (tests/run.sh does)",
            path.display()
        );
    }
    path
}
