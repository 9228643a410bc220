//! The C examples, compiled with gcc against `libsmr.a` under AddressSanitizer and run:
//! `examples/kv.c` (the minimal key-value backend, run twice to restart from a snapshot) and
//! `examples/errors.c` (the error paths of the API, checked from C), and `examples/bench.c` (the
//! C half of `benches/boundary.rs`) on a small workload, its results checked.
//!
//! gcc is required: `.ci/run` installs it. Without it these tests say so loudly and pass, so
//! that `cargo test` works on a machine without a C compiler.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`, where cargo put `libsmr.a` when it built this crate for the test.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

fn gcc_available() -> bool {
    let found = Command::new("gcc").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "\n\n!!! SKIPPED: gcc is not installed, so the C examples were NOT compiled or run. !!!\n\
             !!! Install gcc (`.ci/run` does) to run them.                                   !!!\n\n"
        );
    }
    found
}

/// Compiles `examples/<name>.c` with AddressSanitizer into the test's temporary directory.
fn compile(name: &str) -> PathBuf {
    // `cargo test` leaves the staticlib in deps/; `cargo build` also copies it up a level.
    let library = [profile_dir().join("deps/libsmr.a"), profile_dir().join("libsmr.a")]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| profile_dir().join("deps/libsmr.a"));
    assert!(library.exists(), "{} is missing: cargo builds it with this crate", library.display());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capi-{name}"));
    let output = Command::new("gcc")
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(["-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(format!("examples/{name}.c")))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out)
        .output()
        .expect("run gcc");
    assert!(output.status.success(), "gcc failed for {name}.c:\n{}", String::from_utf8_lossy(&output.stderr));
    out
}

/// A loopback port for a test node: below the ephemeral range, so that no other node's
/// outgoing connection takes it before this one binds it (see `smr_net::test_ports`).
fn free_port() -> u16 {
    smr_net::test_ports::free_port()
}

/// A one-node cluster's config, without a `[raft]` table (errors.c appends a wrong one), that
/// snapshots after every few hundred bytes of log so that a restart restores from a snapshot.
fn write_config(dir: &Path) -> PathBuf {
    let (peer, client) = (free_port(), free_port());
    let text = format!(
        "node_id = 1\ncluster_id = \"0xca\"\ndata_dir = \"data\"\n\
         secret = \"c-api-test-secret-of-32-characters\"\n\
         peer_listen = \"127.0.0.1:{peer}\"\nclient_listen = \"127.0.0.1:{client}\"\n\
         [[members]]\nid = 1\npeer_address = \"127.0.0.1:{peer}\"\nclient_address = \"127.0.0.1:{client}\"\n\
         [pipeline]\nsnapshot_log_bytes = 256\n\
         [log]\nsegment_bytes = 4194304\nentry_bytes_max = 3145728\nsubmit_bytes_max = 8388608\n"
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs a compiled example under AddressSanitizer, leak checking on.
fn run(program: &Path, config: &Path) -> Output {
    let output = Command::new(program)
        .arg(config)
        .current_dir(config.parent().expect("config directory"))
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
        .output()
        .expect("run the example");
    eprintln!(
        "--- {} stdout:\n{}--- stderr:\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn kv_example_serves_puts_and_reads_and_restarts_from_its_snapshot() {
    if !gcc_available() {
        return;
    }
    let program = compile("kv");
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = write_config(dir.path());
    let first = run(&program, &config);
    assert!(first.status.success(), "kv failed: {:?}", first.status);
    let stdout = String::from_utf8_lossy(&first.stdout);
    for line in [
        "put greeting: previous \"\"",
        // The role and membership notifications reached C before the first put committed.
        "notified: leader in term 2, voters 1 (first 1), learners 0",
        "retry applied 0 times",
        "async puts failed: 0",
        "read key7 = value7",
        "keys: 11",
        "status has state_hash: yes",
        "metrics is an object: yes",
        "stopped cleanly",
    ] {
        assert!(stdout.contains(line), "kv's output lacks {line:?}:\n{stdout}");
    }
    assert!(!stdout.contains("restored from a snapshot"), "an empty data directory has no snapshot");

    let second = run(&program, &config);
    assert!(second.status.success(), "kv failed on restart: {:?}", second.status);
    let stdout = String::from_utf8_lossy(&second.stdout);
    for line in ["restored from a snapshot", "put greeting: previous \"hello\"", "read key7 = value7", "keys: 11"] {
        assert!(stdout.contains(line), "kv's output after a restart lacks {line:?}:\n{stdout}");
    }
}

#[test]
fn errors_example_gets_every_documented_status() {
    if !gcc_available() {
        return;
    }
    let program = compile("errors");
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = write_config(dir.path());
    let output = run(&program, &config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "errors.c failed ({:?}); see its stderr above", output.status);
    assert!(stdout.contains("checks passed"), "{stdout}");
}

#[test]
fn bench_program_runs_a_small_workload_and_checks_its_results() {
    if !gcc_available() {
        return;
    }
    let program = compile("bench");
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(&program)
        .arg(dir.path())
        .args(["8", "--ops", "300"])
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("--- bench stdout:\n{stdout}--- stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "bench reported an unclean run ({:?})", output.status);
    // Write 1 found the leader; the other 299 ran 8 at a time. Every put completed with a
    // previous value of its own key, and every replica applied all 300 to the same state.
    for field in [
        "\"outstanding\":8,",
        "\"ops\":299,",
        "\"completed\":300,",
        "\"errors\":0,",
        "\"bad_results\":0,",
        "\"applied\":[300,300,300]",
        "\"replicas_equal\":true",
    ] {
        assert!(stdout.contains(field), "bench's JSON lacks {field}: {stdout}");
    }
}
