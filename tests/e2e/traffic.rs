//! Traffic in the time series, exactly: a node TCP server that reads what
//! its clients send gets one accepted connection per client and every byte
//! they sent, summed over the series' intervals.
use std::{
    io::Write,
    net::{Shutdown, TcpStream},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use offheap_e2e::*;

const T: Duration = Duration::from_secs(120);
/// Clients, and what each sends: sizes that add up to no round number, so
/// that a byte lost or counted twice shows.
const SENDS: [usize; 7] = [1, 100, 1000, 4096, 65536, 100_003, 7];

/// What `run --mode resident` of the TCP sink reported after SENDS came
/// in (each read entirely by the server), with `env` set for offheap:
/// the report, offheap's stderr (its attached line included) and node's pid.
fn trace_sink(env: &[(&str, &str)]) -> (serde_json::Value, Vec<String>, i32) {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("traffic.json");
    let script = workspace().join("tests/fixtures/tcp_sink.js");
    let mut offheap = Command::new(offheap_bin())
        .args(["run", "--no-live", "--interval", "0.5", "--format", "json"])
        .args(["--output", report.to_str().unwrap(), "--", "/usr/bin/node"])
        .arg(&script)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::new(offheap.stdout.take().unwrap());
    let mut err = Stderr::new(offheap.stderr.take().unwrap());
    let attached = err.wait_attached(T);
    let pid: i32 = attached
        .split_whitespace()
        .nth(4)
        .and_then(|p| p.parse().ok())
        .unwrap();
    err.seen.push(attached);
    let port = out.starting_with("port ", T)[5..].to_string();
    for (i, n) in SENDS.iter().enumerate() {
        let mut c = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        c.write_all(&vec![b'x'; *n]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        // The server read it all once it saw the end of this client's data.
        let want = format!("closed {} bytes ", i + 1);
        let line = out.starting_with(&want, T);
        let sent: usize = SENDS[..=i].iter().sum();
        assert_eq!(line, format!("{want}{sent}"));
    }
    // Two quiet intervals, so that the last reads are in a point.
    sleep(Duration::from_millis(1500));
    signal(&offheap, libc::SIGINT);
    let status = offheap.wait().unwrap();
    // SAFETY: kill(2) of the traced node, which outlives `run` on SIGINT.
    // First: node holds offheap's stderr, whose end `rest` waits for.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let rest = err.rest();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    (read_report(&report), rest, pid)
}

#[test]
fn connections_and_bytes_received_are_counted_exactly() {
    let (r, _, _) = trace_sink(&[]);
    let total: usize = SENDS.iter().sum();
    let series = r["processes"][0]["series"].as_array().unwrap();
    let sum = |field: &str| -> u64 {
        series
            .iter()
            .map(|p| {
                p[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field} in {p}"))
            })
            .sum()
    };
    assert_eq!(sum("accepted_connections"), SENDS.len() as u64);
    assert_eq!(sum("received_bytes"), total as u64);
}

/// A kernel without the sock_recv_length tracepoint (before Linux 6.3),
/// made by hiding it from offheap's BTF check (this kernel has it): the
/// trace runs without the traffic programs, says so in one warning line
/// and in the report, and its points carry no traffic (no data, not zero).
#[test]
fn without_the_sock_recv_length_tracepoint_traffic_is_unavailable_not_zero() {
    let (r, stderr, pid) = trace_sink(&[("OFFHEAP_HIDE_TRACEPOINTS", "sock_recv_length")]);
    let warnings: Vec<&String> = stderr.iter().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        [
            "offheap: warning: traffic is not counted: this kernel has no sock_recv_length \
             tracepoint (Linux 6.3 or later)"
        ],
        "{stderr:?}"
    );
    // First, then the symbolizer's own (node runs without a perf map).
    assert_eq!(
        r["warnings"],
        serde_json::json!([
            "traffic unavailable: this kernel has no sock_recv_length tracepoint (Linux 6.3 \
             or later), so the series carries no traffic figures and the verdict cannot tell \
             memory that tracks load from a leak",
            format!(
                "pid {pid}: no perf map /tmp/perf-{pid}.map found, JS frames show as [JIT]; \
                 run node with --perf-basic-prof"
            )
        ])
    );
    let series = r["processes"][0]["series"].as_array().unwrap();
    // The check below is about points, so there must be some (how many
    // depends on the machine's speed).
    assert!(!series.is_empty(), "{r}");
    for p in series {
        for field in ["accepted_connections", "received_bytes"] {
            assert_eq!(p.get(field), None, "{field} in {p}");
        }
    }
}
