//! Replays every committed corpus file (`fuzz/corpus/<target>/*`) and every crash turned
//! regression (`fuzz/regressions/<target>/*`) through its target as a plain test: what the
//! fuzzing found stays found, without a sanitizer build (issue 17).

use std::path::Path;

fn replay(dir: &str, min_files: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for (name, target) in stockade_fuzz::TARGETS {
        let d = root.join(name);
        let mut files: Vec<_> = match std::fs::read_dir(&d) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) if min_files == 0 => continue,
            Err(e) => panic!("{}: {e}", d.display()),
        };
        files.sort();
        assert!(
            files.len() >= min_files,
            "{}: {} files, expected at least {min_files}",
            d.display(),
            files.len()
        );
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name}: {} panics: {msg}", f.display());
            }
        }
    }
}

/// Every target has a committed corpus, and all of it runs clean.
#[test]
fn corpora_replay_clean() {
    replay("corpus", 5);
}

/// The inputs that once crashed a target (each named after what it found) run clean now.
#[test]
fn regressions_replay_clean() {
    replay("regressions", 0);
}

/// Each target has its cargo-fuzz entry, so what CI replays is what was fuzzed.
#[test]
fn every_target_has_a_fuzz_entry() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("libfuzzer/fuzz_targets");
    for (name, _) in stockade_fuzz::TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!(
                "stockade_fuzz::{}",
                name.replace("frame_decide", "frame::frame_decide")
            )),
            "fuzz_targets/{name}.rs does not call its target"
        );
    }
}

/// The cargo-fuzz crate's own lockfile pins every crate it shares with the workspace at the
/// workspace's version, so what is fuzzed is what ships (refresh it with
/// `cp Cargo.lock fuzz/libfuzzer/Cargo.lock` and a `cargo fuzz build`).
#[test]
fn fuzz_lock_matches_the_workspace() {
    use std::collections::BTreeSet;
    /// (name, version) of every package in a Cargo.lock.
    fn packages(path: &Path) -> BTreeSet<(String, String)> {
        let text = std::fs::read_to_string(path).unwrap();
        text.split("[[package]]")
            .skip(1)
            .filter_map(|p| {
                let field = |k: &str| {
                    p.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
                        .map(|v| v.trim_end_matches('"').to_string())
                };
                Some((field("name")?, field("version")?))
            })
            .collect()
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let main = packages(&root.join("../Cargo.lock"));
    let fuzz = packages(&root.join("libfuzzer/Cargo.lock"));
    assert!(main.len() > 100, "{} packages in Cargo.lock", main.len());
    let stray: Vec<_> = fuzz
        .iter()
        .filter(|(name, _)| main.iter().any(|(n, _)| n == name))
        .filter(|p| !main.contains(*p))
        .collect();
    assert!(
        stray.is_empty(),
        "fuzz/libfuzzer/Cargo.lock has other versions than Cargo.lock: {stray:?}"
    );
}
