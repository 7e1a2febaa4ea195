//! Reading JSON reports: the checks every report passes, sites' totals,
//! stacks and frames.
use super::*;

/// The file name of a report frame's module ("" when it has none).
pub fn module_file(f: &Value) -> &str {
    let m = f["module"].as_str().unwrap_or("");
    m.rsplit('/').next().unwrap_or(m)
}

/// Reads a JSON report written by offheap; `parse_report` checks it.
pub fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading report {}: {e}", path.display()));
    parse_report(&text)
}

/// Parses a JSON report of offheap (a file, stdout, an agent's /report)
/// and checks what must hold of every report of the suite: its schema, and
/// no frame outside every mapping (`assert_frames_mapped`).
pub fn parse_report(text: &str) -> Value {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {:.200}", text));
    assert_eq!(v["schema"], "offheap.report.v1");
    assert_frames_mapped(&v);
    v
}

/// Fails when a stack of `report` holds a native frame in no module: an
/// address outside every mapping of its process, which the walker must
/// never record (issue 12: such a frame ends the stack, marked
/// `truncated`). JS and JIT frames have no module (V8's heap or perf map
/// names them), nor do the report's own markers (address 0x0, a bracketed
/// name, such as the stack cap's "[N smaller stacks, folded ...]").
pub fn assert_frames_mapped(report: &Value) {
    let mut bad = Vec::new();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    // A process that exited before its memory map was read has no modules
    // to place its frames in (the report says so): nothing to check there.
    let unmapped: Vec<String> = list(&report["warnings"])
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.contains(": no memory map captured before it exited"))
        .map(str::to_string)
        .collect();
    for p in list(&report["processes"]) {
        let pid = format!("pid {}:", p["pid"]);
        if unmapped.iter().any(|w| w.starts_with(&pid)) {
            continue;
        }
        for s in list(&p["stacks"]) {
            // Frame 0 is not unwound: the faulting instruction, or the
            // return address at the probed call; code the symbolizer may
            // not have captured yet (mapped after its last read) is still
            // code. Every frame after it is the walker's.
            for (i, f) in list(&s["frames"]).iter().enumerate().skip(1) {
                let native = f["kind"].as_str().unwrap_or("native") == "native";
                let marker =
                    f["addr"] == "0x0" && f["symbol"].as_str().is_some_and(|n| n.starts_with('['));
                if native && !marker && f["module"].as_str().is_none() {
                    bad.push(format!(
                        "pid {} ({}): frame {i} {} in no module, of stack {}",
                        p["pid"], p["comm"], f["addr"], s["frames"]
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "frames outside every mapping:\n{}",
        bad.join("\n")
    );
}

pub fn hex(s: &Value) -> u64 {
    u64::from_str_radix(s.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Per-stack figures summed over a set of stacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub total_bytes: u64,
    pub total_allocs: u64,
}

/// Sums the stacks of the report's first process whose first frame lies in
/// [start, start + len].
pub fn site_totals(report: &Value, start: u64, len: u64) -> Totals {
    process_site_totals(&report["processes"][0], start, len)
}

/// `site_totals` of one process of a report.
pub fn process_site_totals(process: &Value, start: u64, len: u64) -> Totals {
    let mut t = Totals::default();
    for s in process["stacks"].as_array().unwrap() {
        let Some(f0) = s["frames"].as_array().and_then(|f| f.first()) else {
            continue;
        };
        let a = hex(&f0["addr"]);
        if a >= start && a <= start + len {
            t.live_bytes += s["live_bytes"].as_u64().unwrap();
            t.live_allocs += s["live_allocs"].as_u64().unwrap();
            t.total_bytes += s["total_bytes"].as_u64().unwrap();
            t.total_allocs += s["total_allocs"].as_u64().unwrap();
        }
    }
    t
}

/// Asserts the figures of every site at once (each site's stacks are those
/// whose first frame lies in its function; `sizes` from `symbol_sizes`),
/// listing every site that differs.
pub fn assert_site_totals(
    report: &Value,
    sites: &HashMap<String, u64>,
    sizes: &HashMap<String, u64>,
    expected: &[SiteFigures<'_>],
) {
    assert_process_sites(&report["processes"][0], sites, sizes, expected)
}

/// `assert_site_totals` for one process of a report.
pub fn assert_process_sites(
    process: &Value,
    sites: &HashMap<String, u64>,
    sizes: &HashMap<String, u64>,
    expected: &[SiteFigures<'_>],
) {
    let mut failures = Vec::new();
    for &(site, live, live_n, total, total_n) in expected {
        let got = process_site_totals(process, sites[site], sizes[site]);
        let want = Totals {
            live_bytes: live,
            live_allocs: live_n,
            total_bytes: total,
            total_allocs: total_n,
        };
        if got != want {
            failures.push(format!("{site}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "PID {}: {}",
        process["pid"],
        failures.join("\n")
    );
}

/// The stacks of a JSON report's first process.
pub fn report_stacks(report: &Value) -> &Vec<Value> {
    report["processes"][0]["stacks"].as_array().unwrap()
}

/// The symbols of a JSON stack's frames, innermost first ("" for none).
pub fn frame_symbols(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("").to_string())
        .collect()
}
