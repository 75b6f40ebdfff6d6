//! The example worker run by hand (not by a coordinator) explains itself and
//! exits 2. (This test also makes `cargo test --workspace` build the
//! `word-stats-worker` binary that the end-to-end tests in `tests/` spawn.)

use std::process::Command;

#[test]
fn run_by_hand_it_explains_and_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_word-stats-worker"))
        .env_remove("PROCPOOL_SERVER")
        .output()
        .expect("run the word-stats-worker binary");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a coordinator starts it"), "{stderr}");
}
