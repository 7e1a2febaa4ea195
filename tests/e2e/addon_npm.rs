//! A real native addon from the npm registry: sharp (prebuilt for
//! linux-x64 in its npm packages, nothing to compile). Its `.node`
//! (`@img/sharp-linux-x64`) needs libvips-cpp.so from another package
//! (`@img/sharp-libvips-linux-x64`), built without frame pointers: the
//! leak's stacks start in libvips, and must still land in `native_addon`,
//! named after sharp's package (classify/addon.rs). tests/fixtures/
//! sharp_leak.js keeps 4 raw 1000x777 RGBA buffers, one g_try_malloc of
//! 3,108,000 bytes each in libvips' vips_image_write_to_memory.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const NODE: &str = "/usr/bin/node";
/// Pinned: the symbol names and library versions below are this release's.
const SHARP: &str = "sharp@0.34.5";
/// The package of sharp's `.node` (its package.json `name`).
const PACKAGE: &str = "@img/sharp-linux-x64";
const LIBVIPS: &str = "libvips-cpp.so.8.17.3";
const BUFFERS: u64 = 4;
const BUFFER_BYTES: u64 = 1000 * 777 * 4;

/// `npm install`s sharp once into target/npm/ (npm's cache beside it), so
/// that a fresh machine needs nothing but the npm registry. Called with the
/// BPF lock held, which serializes installs too.
fn sharp_dir() -> PathBuf {
    let base = workspace().join("target/npm");
    let dir = base.join(SHARP.replace('@', "-"));
    let addon = dir.join("node_modules/@img/sharp-linux-x64/lib/sharp-linux-x64.node");
    if addon.exists() {
        return dir;
    }
    let tmp = base.join(format!("{}.partial", SHARP.replace('@', "-")));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // --ignore-scripts: sharp's install script only checks the prebuilt
    // binary loads (and would try to compile it when it does not).
    let o = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--ignore-scripts",
        ])
        .arg("--cache")
        .arg(base.join("cache"))
        .arg("--prefix")
        .arg(&tmp)
        .arg(SHARP)
        .output()
        .expect("running npm (cargo xtask setup installs it)");
    assert!(
        o.status.success(),
        "npm install {SHARP}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    assert!(
        addon.exists(),
        "{} missing after npm install",
        addon.display()
    );
    dir
}

fn fixture(sharp: &Path) -> Vec<String> {
    vec![
        workspace()
            .join("tests/fixtures/sharp_leak.js")
            .to_string_lossy()
            .into_owned(),
        sharp.to_string_lossy().into_owned(),
    ]
}

fn stacks(report: &Value) -> &Vec<Value> {
    report["processes"][0]["stacks"].as_array().unwrap()
}

/// The stacks of the pixel buffers: libvips' vips_image_write_to_memory
/// called malloc (their frame 0), unwound to the worker thread's start and
/// joined to the JS stack that queued the work (issue 13): one stack per
/// place the work was queued from (the first image from the script, the next
/// ones from the promise continuations). Their figures, summed.
fn buffer_stacks(report: &Value) -> [u64; 4] {
    let found: Vec<&Value> = stacks(report)
        .iter()
        .filter(|s| s["frames"][0]["symbol"] == "vips_image_write_to_memory")
        .collect();
    assert!(!found.is_empty(), "no stack of vips_image_write_to_memory");
    let mut sum = [0u64; 4];
    for s in found {
        assert_eq!(module_file(&s["frames"][0]), LIBVIPS, "{s}");
        assert_eq!(s["bucket"], "native_addon", "{s}");
        assert_eq!(s["addon"], PACKAGE, "{s}");
        // The whole stack: libvips' C code has neither unwind rows nor
        // frame pointers (crossed by stack scanning), sharp's own code
        // above it, node's threadpool thread that ran the work (sharp's
        // AsyncWorker), then the queuing side.
        let frames = s["frames"].as_array().unwrap();
        let modules: Vec<&str> = frames.iter().map(module_file).collect();
        let sharp = modules
            .iter()
            .position(|m| *m == "sharp-linux-x64.node")
            .unwrap_or_else(|| panic!("no frame of sharp's addon: {s}"));
        assert!(
            frames[sharp..].iter().any(|f| f["symbol"] == "worker"),
            "no threadpool worker above the addon: {s}"
        );
        assert_eq!(s["truncated"], false, "{s}");
        for (i, k) in ["live_bytes", "live_allocs", "total_bytes", "total_allocs"]
            .iter()
            .enumerate()
        {
            sum[i] += s[*k].as_u64().unwrap();
        }
    }
    sum
}

#[test]
fn run_malloc_counts_sharps_buffers_as_its_addon() {
    let _lock = require_bpf();
    let sharp = sharp_dir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    // Ticks refresh the captured modules: the addon is dlopen()ed by
    // require, and the process is gone when the report is built.
    let (mut tracer, _, err) = spawn_attached(
        Command::new(offheap_bin())
            .args(["run", "--mode", "malloc", "--no-live", "--interval", "0.2"])
            .args(["--format", "json", "--output", out.to_str().unwrap(), "--"])
            .arg(NODE)
            .args(fixture(&sharp)),
        T,
    );
    let lines = Lines::new(tracer.stdout.take().unwrap());
    lines.until("ready", T);
    // At once: sharp's module was just dlopen()ed, and its code runs now.
    // Its unwind table must be in by then, though the tracer's loop is in a
    // tick (seconds, with this debug build's report of a million frames):
    // the drain thread loads it as it hears of the mapping.
    let mut stdin = tracer.stdin.take().unwrap();
    poke_line(&mut stdin);
    lines.until(&format!("done {BUFFERS} {BUFFER_BYTES}"), T);
    drop(stdin); // node exits at EOF, and with it the trace
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());

    let report = read_report(&out);
    // Node frees external Buffers as it exits: all 4 were made and freed.
    assert_eq!(
        buffer_stacks(&report),
        [0, 0, BUFFERS * BUFFER_BYTES, BUFFERS]
    );
    // sharp's own module shows in stacks too (its init), as sharp's.
    let in_node_file = stacks(&report)
        .iter()
        .filter(|s| {
            s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| module_file(f) == "sharp-linux-x64.node")
        })
        .collect::<Vec<_>>();
    assert!(!in_node_file.is_empty());
    for s in in_node_file {
        assert_eq!(s["addon"], PACKAGE, "{s}");
    }
}

/// Starts the fixture, then `offheap record --pid` on it in `mode` with
/// extra environment; makes the buffers while traced, stops the trace while
/// node still holds them, and returns the report.
fn record(mode: &str, env: &[(&str, &str)]) -> Value {
    let sharp = sharp_dir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let (mut node, lines, _) = start_fixture(Command::new(NODE).args(fixture(&sharp)), T);
    let pid = node.id();
    let (mut tracer, _, err) = spawn_attached(
        Command::new(offheap_bin())
            .args(["record", "--pid", &pid.to_string(), "--mode", mode])
            .args([
                "--no-live",
                "--format",
                "json",
                "--output",
                out.to_str().unwrap(),
            ])
            .envs(env.iter().copied()),
        T,
    );
    let mut stdin = node.stdin.take().unwrap();
    poke_line(&mut stdin);
    lines.until(&format!("done {BUFFERS} {BUFFER_BYTES}"), T);
    stop(&mut tracer, err);
    drop(stdin);
    assert!(node.wait().unwrap().success());
    let report = read_report(&out);
    assert_eq!(report["processes"][0]["pid"], pid);
    report
}

fn stop(tracer: &mut Child, err: Stderr) {
    signal(tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());
}

fn poke_line(stdin: &mut std::process::ChildStdin) {
    use std::io::Write;
    stdin.write_all(b"x\n").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn record_malloc_finds_sharps_leak_live_in_native_addon() {
    let _lock = require_bpf();
    let report = record("malloc", &[]);
    assert_eq!(
        buffer_stacks(&report),
        [
            BUFFERS * BUFFER_BYTES,
            BUFFERS,
            BUFFERS * BUFFER_BYTES,
            BUFFERS
        ]
    );
    // The text output names the package on the stack's line.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    std::fs::write(&json, report.to_string()).unwrap();
    let o = offheap(&["report", json.to_str().unwrap(), "--format", "text"]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    // (The buffers' stacks differ by where the work was queued.)
    let tail = format!(", addon {PACKAGE}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("      ") && l.contains(" live in ") && l.ends_with(&tail)),
        "no stack line ending {tail:?} in\n{text}"
    );
}

/// Resident mode, every first-touch page counted (no sampling): each page
/// wholly inside one of the 4 buffers was first written by libvips (it
/// fills them), so native_addon holds at least those pages. More is right
/// too: libvips' working buffers, freed but still resident in the malloc
/// arena, were libvips' pages as well.
#[test]
fn record_resident_puts_sharps_pages_in_native_addon() {
    let _lock = require_bpf();
    let report = record("resident", &[("OFFHEAP_FAULT_SAMPLE", "1")]);
    let p = &report["processes"][0];
    let whole_pages = BUFFERS * (BUFFER_BYTES / 4096) * 4096;
    let native_addon = p["buckets"]["native_addon"].as_u64().unwrap();
    assert!(
        native_addon >= whole_pages,
        "native_addon {native_addon} < {whole_pages}: {}",
        p["buckets"]
    );
    // The biggest stack is libvips filling the buffers, named as sharp's.
    let top = &stacks(&report)[0];
    assert_eq!(top["bucket"], "native_addon", "{top}");
    assert_eq!(top["addon"], PACKAGE, "{top}");
    assert!(
        top["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| module_file(f) == LIBVIPS),
        "{top}"
    );
}
