//! The command line a user meets first.

use std::process::Command;

fn kiln(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn help_shows_the_commands() {
    let (ok, out, _) = kiln(&["--help"]);
    assert!(ok);
    for cmd in ["bake", "install", "image", "convert"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(cmd)), "--help lacks {cmd}:\n{out}");
    }
    let (ok, out, _) = kiln(&["image", "--help"]);
    assert!(ok && out.contains("inspect") && out.contains("unpack"), "{out}");
}

#[test]
fn unknown_arguments_are_refused_with_usage() {
    let (ok, _, err) = kiln(&["bake", "--no-such-flag", "x"]);
    assert!(!ok && err.contains("--no-such-flag") && err.contains("Usage"), "{err}");
}

#[test]
fn a_missing_image_is_a_clear_error() {
    let (ok, _, err) = kiln(&["image", "inspect", "oci:/nonexistent/layout:latest"]);
    assert!(!ok, "{err}");
    assert!(err.contains("/nonexistent/layout") && err.contains("not an OCI image layout"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
