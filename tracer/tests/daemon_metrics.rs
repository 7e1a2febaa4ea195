//! The metrics server over real HTTP on an ephemeral port.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use offheap::{
    daemon::metrics::{serve, Labels, MetricsState},
    report::{Buckets, ProcessReport, SeriesPoint},
};

/// A minimal HTTP/1.0 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

fn node(pid: u32) -> ProcessReport {
    ProcessReport {
        pid,
        comm: "node".into(),
        rss_bytes: 300 << 20,
        buckets: Buckets {
            v8_heap: 40 << 20,
            array_buffers: 200 << 20,
            native_addon: 3,
            node_native: 4,
            other: 5,
        },
        ..ProcessReport::default()
    }
}

#[test]
fn metrics_healthz_and_report_over_http() {
    let state = MetricsState::new().unwrap();
    let server = serve("127.0.0.1:0", state.clone()).unwrap();
    let addr = server.addr;
    assert_ne!(addr.port(), 0);

    // Not ready until the daemon says so.
    assert_eq!(get(addr, "/healthz").0, 503);
    state.set_ready(true);
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));

    let labels = Labels {
        comm: "node".into(),
        pod_uid: "0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99".into(),
        container_id: "abc".into(),
    };
    let mut p = node(4242);
    let point = |t_secs, array_buffers| SeriesPoint {
        t_secs,
        rss_bytes: 0,
        buckets: Buckets {
            array_buffers,
            ..Buckets::default()
        },
        ..SeriesPoint::default()
    };
    // 10 MiB more off-heap in 10 s.
    p.series = vec![point(0.0, 190 << 20), point(10.0, 200 << 20)];
    state.update_process(&p, &labels);
    state.update_process(&node(7), &Labels::default());
    state.inc_oom_kills();
    state.set_dropped_events_total(17);

    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200);
    let l = r#"comm="node",container_id="abc",pid="4242",pod_uid="0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99""#;
    for want in [
        format!("offheap_bucket_bytes{{bucket=\"array_buffers\",{l}}} 209715200\n"),
        format!("offheap_bucket_bytes{{bucket=\"v8_heap\",{l}}} 41943040\n"),
        format!("offheap_bucket_bytes{{bucket=\"other\",{l}}} 5\n"),
        format!("offheap_rss_bytes{{{l}}} 314572800\n"),
        format!("offheap_growth_bytes_per_second{{{l}}} 1048576\n"),
        "offheap_growth_bytes_per_second{comm=\"\",container_id=\"\",pid=\"7\",pod_uid=\"\"} 0\n"
            .into(),
        "offheap_rss_bytes{comm=\"\",container_id=\"\",pid=\"7\",pod_uid=\"\"} 314572800\n".into(),
        "offheap_oom_kills_total 1\n".into(),
        "offheap_dropped_events_total 17\n".into(),
    ] {
        assert!(body.contains(&want), "missing {want:?} in:\n{body}");
    }
    // The agent's own figures are real: this test process is resident and has used CPU.
    let agent_rss: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("offheap_agent_rss_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(agent_rss > 0);
    assert!(body.contains("offheap_agent_cpu_seconds_total "));

    // An exited process disappears.
    state.remove_process(4242);
    let (_, body) = get(addr, "/metrics");
    assert!(!body.contains("pid=\"4242\""), "{body}");
    assert!(body.contains("pid=\"7\""));

    // /report: no provider yet => 404; then the provider's JSON.
    assert_eq!(get(addr, "/report?pid=7").0, 404);
    state.set_report_provider(Box::new(|pid| {
        (pid == 7).then(|| br#"{"schema":"offheap.report.v1"}"#.to_vec())
    }));
    assert_eq!(
        get(addr, "/report?pid=7"),
        (200, r#"{"schema":"offheap.report.v1"}"#.into())
    );
    assert_eq!(get(addr, "/report?pid=8").0, 404);
    assert_eq!(get(addr, "/report?pid=x").0, 400);
    assert_eq!(get(addr, "/report").0, 400);
    assert_eq!(get(addr, "/nope").0, 404);

    // Returns only once the serving thread has ended.
    server.shutdown();
}

#[test]
fn listening_on_a_bad_address_is_an_error() {
    let state = MetricsState::new().unwrap();
    let err = serve("256.0.0.1:1", state)
        .err()
        .expect("bad address accepted");
    assert!(err.to_string().contains("256.0.0.1:1"), "{err}");
}
