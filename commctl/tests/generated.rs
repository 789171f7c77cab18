//! The shell completions and the man page come from the clap definitions.

use std::process::Command;

fn commctl(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_commctl")).args(args).output().expect("run commctl");
    assert!(output.status.success(), "commctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn completions_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let script = commctl(&["completions", shell]);
        // (clap's fish completions stop at the second level of subcommands.)
        let deep: &[&str] = if shell == "fish" { &[] } else { &["retry-failed", "watch"] };
        for word in ["container_manager", "user-data", "passhash", "unjoin", "restart"].iter().chain(deep) {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("commctl.bash");
    std::fs::write(&path, commctl(&["completions", "bash"])).expect("write");
    // The script loads, and completing `commctl cluster re` offers restart and its siblings.
    let probe = format!(
        "source {}; COMP_WORDS=(commctl cluster re); COMP_CWORD=2; _commctl commctl re cluster; echo \"${{COMPREPLY[*]}}\"",
        path.display()
    );
    let output = Command::new("bash").arg("-c").arg(probe).output().expect("bash");
    let offered = String::from_utf8_lossy(&output.stdout);
    assert!(offered.contains("restart"), "offered: {offered:?} {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_man_pages() {
    let page = commctl(&["man"]);
    assert!(page.contains(".TH commctl 1"), "{page}");
    assert!(page.contains("Exit status"));
    let dir = tempfile::tempdir().expect("tempdir");
    commctl(&["man", "--dir", &dir.path().display().to_string()]);
    for page in ["commctl.1", "commctl-host-ssh.1", "commctl-cluster-restart-status.1", "commctl-user-data.1"] {
        assert!(dir.path().join(page).is_file(), "{page} missing");
    }
    if Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let rendered =
            Command::new("man").arg("-l").arg(dir.path().join("commctl-host-ssh.1")).env("MANPAGER", "cat").output();
        let text = String::from_utf8_lossy(&rendered.expect("man").stdout).into_owned();
        assert!(text.contains("private temporary file"), "{text}");
    }
}
