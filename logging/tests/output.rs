//! What `init` really writes, seen from outside: this test binary runs itself as a child with
//! stderr on a pipe (not a terminal), as under systemd or the lab's log files.

use std::process::Command;

const CHILD: &str = "STOCKADE_LOGGING_CHILD";

/// In the child: log one line in the requested format and exit.
fn child_logs() -> bool {
    let Ok(format) = std::env::var(CHILD) else {
        return false;
    };
    let format = match format.as_str() {
        "json" => stockade_logging::LogFormat::Json,
        _ => stockade_logging::LogFormat::Text,
    };
    stockade_logging::init(format);
    tracing::warn!(object = "a1b2", "stored object checked");
    true
}

fn run_child(format: &str, no_color: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, format)
        .env("RUST_LOG", "info");
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// The child's entry point (does nothing in the parent run).
#[test]
fn child_entry() {
    child_logs();
}

#[test]
fn text_logs_on_a_pipe_have_no_escape_codes() {
    for no_color in [None, Some(""), Some("1")] {
        let err = run_child("text", no_color);
        let line = err
            .lines()
            .find(|l| l.contains("stored object checked"))
            .unwrap_or_else(|| panic!("no log line in {err:?}"));
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line:?}");
        assert!(
            line.contains("WARN") && line.contains("object=\"a1b2\""),
            "{line}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let err = run_child("json", None);
    let line = err
        .lines()
        .find(|l| l.contains("stored object checked"))
        .unwrap_or_else(|| panic!("no log line in {err:?}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["message"], "stored object checked");
    assert_eq!(v["fields"]["object"], "a1b2");
    assert!(v["timestamp"].is_string());
}
