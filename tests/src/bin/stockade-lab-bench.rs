//! The lab's figures for BENCHMARKS.md: time from `stockade-lab up` to every Prometheus target
//! healthy, the demo's wall time, and the peak RSS (VmHWM) of each daemon once the demo has run,
//! per data plane. Each run is a fresh lab with a unique prefix, torn down afterwards.
//!
//! ```sh
//! cargo build --release --bins -p stockade-lab -p stockade-gateway -p stockade-service \
//!     -p stockade-stock -p stockade-client -p stockade-tests
//! sudo target/release/stockade-lab-bench --runs 3
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stockade_tests::lab::{ok, Lab};

struct Run {
    up: Duration,
    healthy: Option<f64>,
    demo: Duration,
    down: Duration,
    hwm_kib: BTreeMap<String, u64>,
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn one(tag: &str, plane: &str) -> Run {
    let lab = Lab::up(tag, plane);
    // `up` prints "every target up after X s" (measured by `up` from its start).
    let healthy = lab
        .up_output
        .split("every target up after ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|x| x.parse::<f64>().ok());
    let start = Instant::now();
    let out = lab.run(&["demo"], Duration::from_secs(600));
    let demo = start.elapsed();
    ok(&out, "demo");
    let mut hwm_kib = BTreeMap::new();
    for (name, pid) in lab.daemon_pids() {
        if let Some(k) = vm_hwm_kib(pid) {
            hwm_kib.insert(name, k);
        }
    }
    let start = Instant::now();
    ok(&lab.run(&["down"], Duration::from_secs(120)), "down");
    let down = start.elapsed();
    Run {
        up: lab.up_time,
        healthy,
        demo,
        down,
        hwm_kib,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 1usize;
    let mut planes = vec!["userspace".to_string(), "nftables".to_string()];
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args[i + 1].parse().expect("--runs N");
                i += 1;
            }
            "--plane" => {
                planes = vec![args[i + 1].clone()];
                i += 1;
            }
            other => panic!("unknown argument {other} (--runs N, --plane userspace|nftables)"),
        }
        i += 1;
    }
    assert!(
        stockade_tests::lab::is_root(),
        "run as root (the lab creates network namespaces)"
    );
    println!("binaries: {}", stockade_tests::bin_dir().display());
    for plane in &planes {
        let mut all = vec![];
        for r in 0..runs {
            let tag = format!("b{}{r}", &plane[..1]);
            let run = one(&tag, plane);
            eprintln!(
                "{plane} run {}: up {:.1}s (targets healthy after {:?}s), demo {:.1}s, down {:.1}s",
                r + 1,
                run.up.as_secs_f64(),
                run.healthy,
                run.demo.as_secs_f64(),
                run.down.as_secs_f64()
            );
            all.push(run);
        }
        println!("\n### {plane} plane ({runs} run(s), median)\n");
        println!("| figure | value |");
        println!("|---|---|");
        println!(
            "| `up` → every Prometheus target healthy | {:.1} s |",
            median(all.iter().filter_map(|r| r.healthy).collect())
        );
        println!(
            "| `up` wall time | {:.1} s |",
            median(all.iter().map(|r| r.up.as_secs_f64()).collect())
        );
        println!(
            "| `demo` wall time | {:.1} s |",
            median(all.iter().map(|r| r.demo.as_secs_f64()).collect())
        );
        println!(
            "| `down` wall time | {:.1} s |",
            median(all.iter().map(|r| r.down.as_secs_f64()).collect())
        );
        let names: Vec<String> = all[0].hwm_kib.keys().cloned().collect();
        for n in names {
            let v: Vec<f64> = all
                .iter()
                .filter_map(|r| r.hwm_kib.get(&n).map(|k| *k as f64))
                .collect();
            println!("| peak RSS (VmHWM) {n} | {:.1} MiB |", median(v) / 1024.0);
        }
    }
}
