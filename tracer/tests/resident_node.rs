//! Resident mode on real node processes: real BPF, the real kernel.
mod resident_common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use offheap::{
    report::raw::RawProcess,
    report::{Attribution, Bucket},
};
use resident_common::{NodeSymbols, Tracer, NODE};

const MIB: u64 = 1 << 20;

struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Node {
    fn start(script: &str, args: &[&str]) -> Node {
        let path = format!("{}/../tests/fixtures/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(NODE)
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in stdout.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut n = Node {
            child,
            stdin,
            lines,
        };
        // Let node boot before attaching: boot memory is preexisting.
        n.stdin.write_all(b"").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        n
    }

    /// Sends one byte and waits for the fixture's next line, draining the
    /// ring buffer meanwhile as the session loop does.
    fn step(&mut self, tracer: &mut Tracer) -> String {
        self.stdin.write_all(b"g").unwrap();
        self.stdin.flush().unwrap();
        loop {
            tracer.drain();
            match self.lines.recv_timeout(Duration::from_millis(5)) {
                Ok(l) => {
                    tracer.drain();
                    return l;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(e) => panic!("fixture stdout: {e}"),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dump(raw: &RawProcess, syms: &NodeSymbols) {
    eprintln!("{:?}", raw.reconciliation);
    let mut stacks: Vec<_> = raw.stacks.iter().collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
    let first_touch = stacks
        .iter()
        .filter(|s| s.attribution == Some(Attribution::FirstTouch))
        .take(12);
    for s in stacks.iter().take(6).chain(first_touch) {
        let names: Vec<String> = s
            .ips
            .iter()
            .take(14)
            .map(|ip| {
                syms.name(*ip)
                    .map_or(format!("{ip:#x}"), |n| n.chars().take(60).collect())
            })
            .collect();
        eprintln!(
            "{:>8} KiB {:?} {:?} {}",
            s.live_bytes / 1024,
            s.attribution,
            syms.classify(&s.ips),
            names.join(" < ")
        );
    }
}

#[test]
fn buffer_leak_lands_in_array_buffers_by_mapping() {
    let syms = NodeSymbols::load();
    let mut node = Node::start("buffer_leak.js", &["200"]);
    let pid = node.child.id();
    let mut tracer = Tracer::attach(pid);
    let line = node.step(&mut tracer);
    assert!(line.starts_with("done 200"), "fixture said {line:?}");
    assert_eq!(tracer.lost_events(), 0, "ring buffer overflowed");
    let raw = tracer.finish(pid, &mut |_, ips| syms.classify(ips));
    dump(&raw, &syms);
    let retained = 200 * MIB;
    let by_mapping_in_ab: u64 = raw
        .stacks
        .iter()
        .filter(|s| s.attribution == Some(Attribution::Mapping))
        .filter(|s| syms.classify(&s.ips) == Bucket::ArrayBuffers)
        .map(|s| s.live_bytes)
        .sum();
    assert!(
        by_mapping_in_ab * 10 >= retained * 8,
        "array_buffers by mapping: {} MiB of {} MiB retained",
        by_mapping_in_ab / MIB,
        retained / MIB
    );
    // Nothing is counted twice: every attributed byte is resident.
    let attributed: u64 = raw.stacks.iter().map(|s| s.live_bytes).sum();
    assert!(
        attributed <= raw.rss_bytes,
        "{attributed} > rss {}",
        raw.rss_bytes
    );
    // The allocation site itself, reached by unwinding through glibc's calloc.
    let allocate = raw.stacks.iter().any(|s| {
        s.ips.iter().any(|ip| {
            syms.name(*ip) == Some("node::NodeArrayBufferAllocator::Allocate(unsigned long)")
        })
    });
    assert!(
        allocate,
        "no stack through NodeArrayBufferAllocator::Allocate"
    );
}

/// node_native bytes of stacks inside V8's garbage collector (its malloc'd
/// marking and scavenging worklists).
fn gc_bookkeeping(stacks: &[offheap::report::raw::RawStack], syms: &NodeSymbols) -> u64 {
    const GC: &[&str] = &[
        "heap::base::Worklist",
        "v8::internal::Scavenger",
        "v8::internal::ScavengerCollector",
        "v8::internal::ConcurrentMarking",
        "v8::internal::MarkCompactCollector",
        "v8::internal::MarkingVisitorBase",
        "v8::internal::Sweeper",
    ];
    stacks
        .iter()
        .filter(|s| syms.classify(&s.ips) == Bucket::NodeNative)
        .filter(|s| {
            s.ips.iter().filter_map(|ip| syms.name(*ip)).any(|n| {
                GC.iter()
                    .any(|g| n.starts_with(g) || n.contains(&format!(" {g}")))
            })
        })
        .map(|s| s.live_bytes)
        .sum()
}

#[test]
fn js_heap_growth_stays_out_of_off_heap_buckets() {
    let syms = NodeSymbols::load();
    let mut node = Node::start("js_heap_growth.js", &["400000"]);
    let pid = node.child.id();
    let mut tracer = Tracer::attach(pid);
    let mut classify = |_: u32, ips: &[u64]| syms.classify(ips);
    // Two warm-up phases: V8's young generation (reserved before tracing)
    // is fully cycled, and its first touches are behind us.
    assert!(node.step(&mut tracer).starts_with("phase 1"));
    assert!(node.step(&mut tracer).starts_with("phase 2"));
    tracer.sample(&mut classify);
    let start = tracer.procs[&pid].last().unwrap().buckets;
    let gc_start = gc_bookkeeping(&tracer.procs[&pid].raw_stacks(), &syms);
    assert!(node.step(&mut tracer).starts_with("phase 3"));
    assert!(node.step(&mut tracer).starts_with("phase 4"));
    eprintln!("{:?} in {:?}", tracer.stats, tracer.drain_time);
    assert_eq!(tracer.lost_events(), 0, "ring buffer overflowed");
    let raw = tracer.finish(pid, &mut classify);
    dump(&raw, &syms);
    assert!(
        raw.reconciliation
            .as_deref()
            .unwrap_or("")
            .contains(", within 5%)"),
        "{:?}",
        raw.reconciliation
    );
    let mut end = raw.series.last().unwrap().buckets;
    let gc_end = gc_bookkeeping(&raw.stacks, &syms);
    eprintln!(
        "GC bookkeeping (node_native): {} -> {} KiB",
        gc_start / 1024,
        gc_end / 1024
    );
    // The GC's malloc'd worklists grow with the heap; classify.rs counts them
    // as node_native on purpose (heapTotal never shows them). Everything
    // else must stay put.
    let mut start = start;
    start.node_native -= gc_start;
    end.node_native -= gc_end;
    eprintln!("start {start:?}\nend   {end:?}");
    assert!(
        end.v8_heap >= start.v8_heap + 40 * MIB,
        "v8_heap {} -> {} MiB",
        start.v8_heap / MIB,
        end.v8_heap / MIB
    );
    // Within 10% of the start, or 1% of the V8 heap's growth: pages of V8's
    // young generation (reserved before tracing) first touched by JS
    // builtins are charged to those frames (node_native), a few dozen pages.
    let v8_growth = end.v8_heap - start.v8_heap;
    for b in Bucket::ALL.into_iter().filter(|b| b.is_off_heap()) {
        let (s, e) = (start.get(b), end.get(b));
        assert!(
            e.abs_diff(s) * 10 <= s || e.abs_diff(s) * 100 <= v8_growth,
            "{} went from {} KiB to {} KiB while v8_heap grew {} MiB",
            b.as_str(),
            s / 1024,
            e / 1024,
            v8_growth / MIB
        );
    }
}
