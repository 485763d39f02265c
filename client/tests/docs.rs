//! The manual page and completion scripts the Debian package installs (packaging/client/) are
//! exactly what the binary prints, so they cannot fall behind the command line (issue 15).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stockade");

fn printed(args: &[&str]) -> Vec<u8> {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "stockade {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn packaged_man_page_and_completions_match_the_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/client");
    for (file, args) in [
        ("stockade.1", &["man"][..]),
        ("stockade.bash", &["completions", "bash"][..]),
        ("_stockade", &["completions", "zsh"][..]),
        ("stockade.fish", &["completions", "fish"][..]),
    ] {
        let want = printed(args);
        let have = std::fs::read(dir.join(file)).unwrap_or_default();
        assert!(
            want == have,
            "packaging/client/{file} is not what `stockade {}` prints: regenerate it with\n  \
             cargo run -q -p stockade-client -- {} > packaging/client/{file}",
            args.join(" "),
            args.join(" ")
        );
    }
    // The man page documents every subcommand.
    let man = String::from_utf8(printed(&["man"])).unwrap();
    for sub in [
        "keygen",
        "register",
        "upload",
        "download",
        "share",
        "compose",
        "completions",
    ] {
        assert!(man.contains(sub), "the man page lacks {sub}");
    }
}
