//! DuckDB, through the Python package tests/run.sh installs: suites read back what Osprey
//! wrote for the data lake (serve's Parquet archive, the Firehose transformer's JSON rows).

use std::ffi::OsStr;
use std::process::Command;

/// Runs the Python `script` (which imports `duckdb`) with `args` as `sys.argv[1..]` and gives
/// its standard output.
///
/// # Panics
///
/// When `OSPREY_TEST_DUCKDB_PYTHON` is unset (run through `bash tests/run.sh`), or the script
/// fails (with its standard error).
pub fn duckdb_script<S: AsRef<OsStr>>(script: &str, args: &[S]) -> String {
    let python = std::env::var("OSPREY_TEST_DUCKDB_PYTHON").unwrap_or_else(|_| {
        panic!("OSPREY_TEST_DUCKDB_PYTHON: run through `bash tests/run.sh`, which installs DuckDB")
    });
    let out = Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run DuckDB's python: {e}"));
    assert!(
        out.status.success(),
        "the DuckDB script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
