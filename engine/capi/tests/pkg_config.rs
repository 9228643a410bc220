//! `smr.pc.in` stays in step with the crate, and pkg-config reads it (when installed).

use std::path::Path;
use std::process::Command;

fn template() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("smr.pc.in")).expect("smr.pc.in")
}

#[test]
fn pc_template_has_the_crate_version() {
    let version = format!("Version: {}", env!("CARGO_PKG_VERSION"));
    assert!(template().lines().any(|l| l == version), "smr.pc.in must say `{version}` (bump it with the crate)");
}

#[test]
fn pkg_config_reads_the_filled_in_template() {
    if Command::new("pkg-config").arg("--version").output().is_err() {
        eprintln!("\n!!! SKIPPED: pkg-config is not installed; smr.pc.in was not checked with it. !!!\n");
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let filled = template().replace("@LIBDIR@", "/opt/smr/lib").replace("@INCLUDEDIR@", "/opt/smr/include");
    std::fs::write(dir.path().join("smr.pc"), filled).expect("write smr.pc");
    let output = Command::new("pkg-config")
        .args(["--cflags", "--libs", "smr"])
        .env("PKG_CONFIG_PATH", dir.path())
        .output()
        .expect("run pkg-config");
    assert!(output.status.success(), "pkg-config: {}", String::from_utf8_lossy(&output.stderr));
    let flags = String::from_utf8_lossy(&output.stdout);
    assert_eq!(flags.trim(), "-I/opt/smr/include -L/opt/smr/lib -lsmr");
}
