//! Reload semantics without packets on the wire: a valid edit swaps the rules and revokes the
//! flows they no longer admit; an invalid edit keeps the old rules; both are counted; a file
//! change is picked up by the watcher (no root needed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use stockade_gateway::dataplane::{Gateway, Outcome};
use stockade_gateway::metrics::{Metrics, ReloadResult};
use stockade_gateway::packet::Port;
use stockade_gateway::reload::{Reloader, Trigger};

const SVC_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x33, 0x64, 0x6e];
const STOCK_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x33, 0x64, 0x32];

fn rules(with_service: bool) -> String {
    let rule = if with_service {
        "  - name: service_to_stock\n    direction: inbound\n    protocol: tcp\n    src: [service]\n    dst: [stock]\n    dst_ports: [7443]\n    action: accept\n"
    } else {
        ""
    };
    format!(
        "settings:\n  inside_sources: [stock]\n  conntrack_limit: 128\n\
         sets:\n  service: [198.51.100.110]\n  stock: [198.51.100.50]\n  clients: [198.51.100.101]\n\
         pins:\n  198.51.100.110: \"02:00:c6:33:64:6e\"\n\
         rules:\n{rule}  - name: push\n    direction: outbound\n    protocol: tcp\n    src: [stock]\n    dst: [clients]\n    dst_ports: [7137]\n    action: accept\n    one_way: true\n"
    )
}

fn syn(sport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(SVC_MAC, STOCK_MAC)
        .ipv4([198, 51, 100, 110], [198, 51, 100, 50], 64)
        .tcp(sport, 7443, 1000, 64240)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_swaps_revokes_and_refuses_invalid_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    write(&path, &rules(true));
    let metrics = Arc::new(Metrics::new().unwrap());
    let (_, initial) = stockade_gateway::reload::load_checked(&path).unwrap();
    let gw = Arc::new(Gateway::new(initial, metrics.clone()));
    gw.open();
    let now = Instant::now();
    assert_eq!(
        gw.process(now, &syn(40001), Port::Outside, false).0,
        Outcome::Forward
    );
    assert_eq!(gw.engine().table.len(), 1);

    let reloader = Reloader::new(&path, gw.clone(), None);

    // Invalid: refused with the file's position, old rules stay, counted as error.
    write(
        &path,
        "settings:\n  inside_sources: [stock]\nrules:\n  - name: x\n    direction: sideways\n",
    );
    let err = reloader.reload(Trigger::Signal).unwrap_err().to_string();
    assert!(
        err.contains("rules.yaml:5:"),
        "error names file:line:column: {err}"
    );
    assert_eq!(metrics.reloads(ReloadResult::Error), 1);
    assert_eq!(metrics.reloads(ReloadResult::Ok), 0);
    assert_eq!(metrics.rules_loaded.get(), 2);
    assert_eq!(
        gw.engine().table.len(),
        1,
        "an invalid file revokes nothing"
    );
    assert_eq!(
        gw.process(now, &syn(40002), Port::Outside, false).0,
        Outcome::Forward
    );

    // A file event with unchanged content is not a reload.
    assert_eq!(
        reloader.reload(Trigger::FileChange).unwrap_or(Some(99)),
        None
    );
    assert_eq!(metrics.reloads(ReloadResult::Error), 1);

    // Valid without the service: swapped, the service's flows revoked and counted.
    write(&path, &rules(false));
    assert_eq!(reloader.reload(Trigger::Signal).unwrap(), Some(2));
    assert_eq!(metrics.reloads(ReloadResult::Ok), 1);
    assert_eq!(metrics.flows_revoked.get(), 2);
    assert_eq!(metrics.rules_loaded.get(), 1);
    assert_eq!(gw.engine().table.len(), 0);
    assert!(matches!(
        gw.process(now, &syn(40003), Port::Outside, false).0,
        Outcome::Drop(_)
    ));

    // The watcher picks up an edit by itself (bounded wait).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = rt.spawn(Arc::new(reloader).run(stop_rx));
    std::thread::sleep(Duration::from_millis(300)); // let the watch be installed
    write(&path, &rules(true));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.reloads(ReloadResult::Ok) < 2 {
        assert!(
            Instant::now() < deadline,
            "file change not picked up in 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metrics.rules_loaded.get(), 2);
    assert_eq!(
        gw.process(Instant::now(), &syn(40004), Port::Outside, false)
            .0,
        Outcome::Forward
    );
    stop_tx.send(true).unwrap();
    rt.block_on(task).unwrap().unwrap();
}
