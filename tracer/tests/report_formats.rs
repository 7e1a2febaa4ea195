//! `offheap report FILE.json --format …` on a committed report of a Node
//! process (fixtures/after.json: an addon leaking 5 MiB in 64 KiB chunks,
//! 2.5 MiB of Buffers, zlib state, V8 pages, one unsymbolized JIT stack).
mod report_support;

use std::{collections::BTreeMap, path::Path, process::Command, sync::OnceLock};

use report_support::{decode_pprof, fixture, load, offheap, offheap_ok, sum};

const AFTER: &str = "after.json";
const ADDON_LIVE: u64 = 5 * 1024 * 1024;
const LIVE_TOTAL: u64 = 5_242_880 + 2_621_440 + 300_000 + 8_388_608 + 4_096;

fn path(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

#[test]
fn fixture_buckets_add_up() {
    let r = load(AFTER);
    let p = &r.processes[0];
    assert_eq!(p.buckets.total(), LIVE_TOTAL);
    assert_eq!(sum(&r, |s| s.live_bytes), LIVE_TOTAL);
}

fn folded_sum(text: &str) -> u64 {
    text.lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn folded_sums_to_the_json_totals() {
    let r = load(AFTER);
    let live =
        String::from_utf8(offheap_ok(&["report", &path(AFTER), "--format", "folded"])).unwrap();
    assert_eq!(folded_sum(&live), LIVE_TOTAL);
    let total = String::from_utf8(offheap_ok(&[
        "report",
        &path(AFTER),
        "--format",
        "folded",
        "--value",
        "total",
    ]))
    .unwrap();
    assert_eq!(folded_sum(&total), sum(&r, |s| s.total_bytes));
    assert_eq!(
        folded_sum(&total),
        5_439_488 + 3 * 2_621_440 + 300_000 + 8_388_608 + 4_096
    );
    // Outermost first, process as root, exact leak size.
    assert!(live.contains(
        "node (pid 2222);__libc_start_call_main;node::Start(int, char**);uv_run;\
         JS:~processTicksAndRejections;JS:*handleRequest;"
    ));
    let addon = live.lines().find(|l| l.contains(";leak_chunk;")).unwrap();
    assert!(addon.ends_with(";Leak(napi_env__*, napi_callback_info__*);leak_chunk;malloc 5242880"));
    // Unnamed JIT code is one frame, not an address.
    assert!(live.contains("node (pid 2222);[JIT];libc.so.6@0x7f2200001234;malloc 4096\n"));
}

#[test]
fn json_roundtrips_exactly() {
    let out = offheap_ok(&["report", &path(AFTER), "--format", "json"]);
    let again = offheap::report::json::parse(&out).unwrap();
    // A report written before verdicts gains one, and only that.
    let mut want = load(AFTER);
    let mode = want.mode;
    for p in &mut want.processes {
        assert!(p.verdict.is_none());
        p.verdict = Some(offheap::report::verdict::judge(p, mode));
    }
    assert_eq!(again, want);
}

#[test]
fn text_shows_summary_series_and_quantiles() {
    let t = String::from_utf8(offheap_ok(&["report", &path(AFTER), "--top", "1"])).unwrap();
    assert!(
        t.contains(
            "V8 heap 8.0 MiB · off-heap 7.8 MiB (array_buffers 2.5 MiB, native_addon 5.0 MiB, \
         node_native 293.0 KiB, other 4.0 KiB)"
        ),
        "{t}"
    );
    assert!(
        t.contains("    native_addon      5.0 MiB   +170.7 KiB/s  ▁▃▅█"),
        "{t}"
    );
    assert!(
        t.contains("sizes     p50 64.0 KiB · p90 64.0 KiB · p99 64.0 KiB · max 64.0 KiB (n=80)")
    );
    assert!(t.contains("lifetimes p50 1.2ms · p90 9.0ms · p99 40.0ms · max 51.0ms (n=40)"));
    assert!(t.contains("leak_chunk (/app/src/leaky.c:21)"));
}

fn xml_titles(svg: &Path) -> Vec<String> {
    // python3's expat parser rejects anything that is not well-formed XML.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, xml.etree.ElementTree as ET\n\
             root = ET.parse(sys.argv[1]).getroot()\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             titles = [t.text for t in root.iter(ns + 'title')]\n\
             texts = [t.text for t in root.iter(ns + 'text') if t.text]\n\
             print(json.dumps(titles + texts))",
        ])
        .arg(svg)
        .output()
        .expect("python3 is needed to check the SVG");
    assert!(
        out.status.success(),
        "SVG is not well-formed XML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn svg_is_well_formed_and_names_the_top_frame() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("flame.svg");
    offheap_ok(&[
        "report",
        &path(AFTER),
        "--format",
        "svg",
        "--output",
        svg.to_str().unwrap(),
    ]);
    let titles = xml_titles(&svg);
    let has = |needle: &str| titles.iter().any(|t| t.contains(needle));
    assert!(
        has("offheap: node (pid 2222) · live bytes 15.8 MiB · V8 heap 8.0 MiB · off-heap 7.8 MiB"),
        "{titles:?}"
    );
    // The addon's allocating frame, with its exact byte count, and its bucket tip.
    assert!(has("leak_chunk (5,242,880 bytes"), "{titles:?}");
    assert!(has("[native_addon] (5,242,880 bytes"), "{titles:?}");
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(
        body.contains("rgb(231,84,128)"),
        "native_addon colour missing"
    );
}

#[test]
fn pprof_decodes_independently_with_the_json_totals() {
    let r = load(AFTER);
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("heap.pb.gz");
    offheap_ok(&[
        "report",
        &path(AFTER),
        "--format",
        "pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    let d = decode_pprof(&pb);
    assert_eq!(
        d["sampleTypes"],
        serde_json::json!([
            "inuse_space/bytes",
            "inuse_objects/count",
            "alloc_space/bytes",
            "alloc_objects/count"
        ])
    );
    assert_eq!(d["defaultSampleType"], "inuse_space");
    assert_eq!(
        d["totals"],
        serde_json::json!([
            sum(&r, |s| s.live_bytes),
            sum(&r, |s| s.live_allocs),
            sum(&r, |s| s.total_bytes),
            sum(&r, |s| s.total_allocs)
        ])
    );
    assert_eq!(d["totals"][0], LIVE_TOTAL);
    let by_bucket: BTreeMap<String, u64> = serde_json::from_value(d["byBucket"].clone()).unwrap();
    let b = r.processes[0].buckets;
    assert_eq!(by_bucket["native_addon"], b.native_addon);
    assert_eq!(by_bucket["array_buffers"], b.array_buffers);
    assert_eq!(by_bucket["v8_heap"], b.v8_heap);
    assert_eq!(d["pids"], serde_json::json!([2222]));
    let addon = "__libc_start_call_main;node::Start(int, char**);uv_run;\
                 JS:~processTicksAndRejections;JS:*handleRequest;\
                 v8impl::(anonymous namespace)::FunctionCallbackWrapper::Invoke(v8::FunctionCallbackInfo<v8::Value> const&);\
                 Leak(napi_env__*, napi_callback_info__*);leak_chunk;malloc";
    assert_eq!(d["stacks"][addon], ADDON_LIVE);
    // JS frames are functions named with their script.
    let funcs = d["functions"].as_array().unwrap();
    assert!(funcs
        .iter()
        .any(|f| f["name"] == "JS:*handleRequest" && f["filename"] == "/app/server.js"));
    assert!(funcs
        .iter()
        .any(|f| f["name"] == "leak_chunk" && f["filename"] == "/app/src/leaky.c"));
    let maps = d["mappings"].as_array().unwrap();
    assert!(maps.iter().any(|m| m["filename"] == "/usr/bin/node"
        && m["buildId"] == "6a1f2e3d4c5b6a7980f1e2d3c4b5a69788776655"));
    assert!(maps
        .iter()
        .any(|m| m["filename"] == "/app/build/Release/leaky.node" && m["buildId"] == ""));
}

#[test]
fn bad_inputs_fail_with_one_line_and_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = offheap(&["report", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("offheap: error: cannot read"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, br#"{"hello": 1}"#).unwrap();
    let out = offheap(&["report", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an offheap JSON report"));

    let out = offheap(&[
        "report",
        &path(AFTER),
        "-o",
        "/proc/offheap-no-such-dir/r.txt",
    ]);
    assert_eq!(out.status.code(), Some(3));
}

/// Google's pprof, built from Debian's source package (see
/// tests/pprof/setup.sh) once per build directory. Missing packages fail the
/// test with the command that installs them.
fn google_pprof() -> &'static Path {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof");
        if bin.exists() {
            return bin;
        }
        let src = Path::new("/usr/share/gocode");
        assert!(
            src.join("src/github.com/google/pprof").exists(),
            "Google's pprof source is missing: run tracer/tests/pprof/setup.sh \
             (apt-get install golang-go golang-github-google-pprof-dev)"
        );
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg("github.com/google/pprof")
            .env("GO111MODULE", "off")
            .env("GOPATH", src)
            .env(
                "GOCACHE",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache"),
            )
            .output()
            .expect("go (apt golang-go) is needed to build pprof");
        assert!(
            out.status.success(),
            "building pprof failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

fn pprof_total(pb: &Path, args: &[&str]) -> String {
    let out = Command::new(google_pprof())
        .args(["-top", "-unit=B"])
        .args(args)
        .arg(pb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn google_pprof_reads_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("heap.pb.gz");
    offheap_ok(&[
        "report",
        &path(AFTER),
        "--format",
        "pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    let top = pprof_total(&pb, &[]);
    assert!(
        top.starts_with("File: node\nBuild ID: 6a1f2e3d4c5b6a7980f1e2d3c4b5a69788776655\n"),
        "{top}"
    );
    assert!(top.contains("Type: inuse_space\n"), "{top}");
    assert!(
        top.contains(&format!("Total samples = {LIVE_TOTAL}B")),
        "{top}"
    );
    let alloc = pprof_total(&pb, &["-sample_index=alloc_space"]);
    assert!(alloc.contains("Total samples = 21996512B"), "{alloc}");
    let addon = pprof_total(&pb, &["-tagfocus=bucket=native_addon"]);
    assert!(
        addon.contains(&format!("Showing nodes accounting for {ADDON_LIVE}B")),
        "{addon}"
    );
    let pid = pprof_total(&pb, &["-tagfocus=pid=2222"]);
    assert!(
        pid.contains(&format!("Showing nodes accounting for {LIVE_TOTAL}B")),
        "{pid}"
    );
}

/// Under a pseudo-terminal (script(1) from util-linux), binary pprof is
/// refused on stdout; through a pipe it is written.
#[test]
fn pprof_is_never_written_to_a_terminal() {
    let cmd = format!(
        "{} report {} --format pprof",
        env!("CARGO_BIN_EXE_offheap"),
        path(AFTER)
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script(1) from util-linux is needed");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(screen.contains("pprof output is binary"), "{screen}");
    let piped = offheap_ok(&["report", &path(AFTER), "--format", "pprof"]);
    assert_eq!(&piped[..2], &[0x1f, 0x8b], "gzip magic");
}
