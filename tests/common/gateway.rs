//! The gateway examples, built for the test that runs them: a test that starts a
//! gateway binary builds it first (with this test's features and profile, into this
//! test's target directory), so `cargo test --test gateways` works on its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The features this test binary was built with, for the examples' build.
fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    for (on, name) in [
        (cfg!(feature = "tracing"), "tracing"),
        (cfg!(feature = "redis"), "redis"),
        (cfg!(feature = "tower"), "tower"),
        (cfg!(feature = "axum"), "axum"),
        (cfg!(feature = "policy"), "policy"),
        (cfg!(feature = "onnx"), "onnx"),
        (cfg!(feature = "metrics"), "metrics"),
        (cfg!(feature = "otel"), "otel"),
    ] {
        if on {
            f.push(name);
        }
    }
    f
}

/// `target/<profile>` of this test binary (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// The path of example `name`, built (or found up to date) by cargo.
///
/// # Panics
///
/// When cargo cannot build it: the build's own output says why.
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let dir = profile_dir();
    let path = dir.join("examples").join(name);
    if !built.iter().any(|b| b == name) {
        let target = dir.parent().expect("target directory");
        let profile = if dir.ends_with("release") {
            "release"
        } else {
            "test"
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--profile", profile, "--example", name])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target)
            .arg("--features")
            .arg(features().join(","))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo could not build example {name}");
        built.push(name.to_owned());
    }
    assert!(
        path.exists(),
        "{} is missing after its build",
        path.display()
    );
    path
}
