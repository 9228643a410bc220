//! The replicated SQLite demo, `examples/sqlite.c`, compiled with gcc against `libsmr.a` and
//! the system's SQLite under AddressSanitizer and run on a 3-node cluster in one process: the
//! leader is stopped mid-way and restarted at the end, and every node's full dump must have the
//! same checksum and every acknowledged row.
//!
//! gcc and `libsqlite3-dev` are required: `.ci/run` installs them. Without either this test
//! says so loudly and passes, so that `cargo test` works on a machine without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`, where cargo put `libsmr.a` when it built this crate for the test.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

fn skip(why: &str) {
    eprintln!(
        "\n\n!!! SKIPPED: {why}, so the SQLite demo was NOT compiled or run. !!!\n\
         !!! Install gcc and libsqlite3-dev (`.ci/run` does) to run it.   !!!\n\n"
    );
}

/// Whether gcc runs and finds `sqlite3.h`.
fn toolchain_available() -> bool {
    if !Command::new("gcc").arg("--version").output().is_ok_and(|o| o.status.success()) {
        skip("gcc is not installed");
        return false;
    }
    let mut child = Command::new("gcc")
        .args(["-E", "-x", "c", "-", "-o", "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run gcc");
    child.stdin.take().expect("stdin").write_all(b"#include <sqlite3.h>\n").expect("write to gcc");
    if !child.wait().expect("wait for gcc").success() {
        skip("sqlite3.h is missing (libsqlite3-dev is not installed)");
        return false;
    }
    true
}

/// Compiles `examples/sqlite.c` with AddressSanitizer into the test's temporary directory.
fn compile() -> PathBuf {
    // `cargo test` leaves the staticlib in deps/; `cargo build` also copies it up a level.
    let library = [profile_dir().join("deps/libsmr.a"), profile_dir().join("libsmr.a")]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| profile_dir().join("deps/libsmr.a"));
    assert!(library.exists(), "{} is missing: cargo builds it with this crate", library.display());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi-sqlite");
    let output = Command::new("gcc")
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(["-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("examples/sqlite.c"))
        .arg(&library)
        .args(["-lsqlite3", "-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out)
        .output()
        .expect("run gcc");
    assert!(output.status.success(), "gcc failed for sqlite.c:\n{}", String::from_utf8_lossy(&output.stderr));
    out
}

/// A loopback port for a test node: below the ephemeral range, so that no other node's
/// outgoing connection takes it before this one binds it (see `smr_net::test_ports`).
fn free_port() -> u16 {
    smr_net::test_ports::free_port()
}

/// Configs of three founding members in `dir`, each with its data directory beside it, that
/// snapshot after every KiB of log so that the restarted node restores from a snapshot.
fn write_configs(dir: &Path) -> Vec<PathBuf> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, (peer, client))| {
            format!(
                "[[members]]\nid = {}\npeer_address = \"127.0.0.1:{peer}\"\nclient_address = \"127.0.0.1:{client}\"\n",
                i + 1
            )
        })
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (peer, client))| {
            let id = i + 1;
            let text = format!(
                "node_id = {id}\ncluster_id = \"0x5a\"\ndata_dir = \"node{id}\"\n\
                 secret = \"sqlite-demo-secret-of-32-characters\"\n\
                 peer_listen = \"127.0.0.1:{peer}\"\nclient_listen = \"127.0.0.1:{client}\"\n{members}\
                 [pipeline]\nsnapshot_log_bytes = 1024\n\
                 [log]\nsegment_bytes = 4194304\nentry_bytes_max = 3145728\nsubmit_bytes_max = 8388608\n"
            );
            let path = dir.join(format!("node{id}.toml"));
            std::fs::write(&path, text).expect("write config");
            path
        })
        .collect()
}

/// The "node N: rows R checksum C" lines: (N, R, C).
fn node_lines(stdout: &str) -> Vec<(u64, u64, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("node ")?;
            let (node, rest) = rest.split_once(": rows ")?;
            let (rows, checksum) = rest.split_once(" checksum ")?;
            Some((node.parse().ok()?, rows.parse().ok()?, checksum.to_string()))
        })
        .collect()
}

#[test]
fn sqlite_demo_keeps_every_replica_identical_across_a_leader_kill_and_restart() {
    if !toolchain_available() {
        return;
    }
    let program = compile();
    let dir = tempfile::tempdir().expect("temporary directory");
    let configs = write_configs(dir.path());
    let output = Command::new(&program)
        .args(&configs)
        .current_dir(dir.path())
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("--- stdout:\n{stdout}--- stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SQLite demo failed ({:?}); see its output above", output.status);
    for line in [
        "duplicate insert: error: UNIQUE constraint failed: ledger.id",
        "commit inside a command: error: not authorized",
        "after a barrier: 80 rows in ledger",
        "survivors agree",
        "restored from a snapshot: yes",
        "all nodes agree",
        "stopped cleanly",
    ] {
        assert!(stdout.contains(line), "the demo's output lacks {line:?}:\n{stdout}");
    }
    let nodes = node_lines(&stdout);
    assert_eq!(nodes.len(), 3, "two survivors and the restarted node report:\n{stdout}");
    let mut ids: Vec<u64> = nodes.iter().map(|(id, _, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3], "every node reports once:\n{stdout}");
    for (id, rows, checksum) in &nodes {
        assert_eq!(*rows, 80, "node {id} holds every acknowledged row:\n{stdout}");
        assert_eq!(checksum, &nodes[0].2, "node {id}'s dump matches node {}'s:\n{stdout}", nodes[0].0);
    }
}
