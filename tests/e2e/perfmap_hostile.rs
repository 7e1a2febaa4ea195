//! A traced process writes its own perf map, and offheap reads it as root.
//! A hostile one must not make offheap reveal a file it could not read
//! itself (a symlink to a root-only file, from a container or not), nor
//! blow up offheap's memory (a 10 MB name, half a million entries).
//!
//! The node processes here run with --interpreted-frames-native-stack and
//! no --perf-basic-prof: their JS frames are in anonymous code memory, where
//! every frame is looked up in the perf map, and node does not write one.
#[path = "watch_common.rs"]
mod watch_common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use offheap_e2e::*;
use serde_json::Value;
use watch_common::{Agent, NODE, T};

/// Plants its perf map as a symlink to argv[2] (when given), sets its title
/// (its comm, which `watch --comm` selects) to argv[3], then on each stdin
/// chunk: keeps 32 Buffers of 256 KiB made in JS, says "done".
const SCRIPT: &str = r#"
const fs = require("fs");
const [plant, title] = process.argv.slice(2);
if (plant) fs.symlinkSync(plant, `/tmp/perf-${process.pid}.map`);
if (title) process.title = title;
const keep = [];
function leakyRequestHandler(n) {
  for (let i = 0; i < n; i++) keep.push(Buffer.allocUnsafeSlow(262144));
}
process.stdout.write(`ready ${process.pid}\n`);
process.stdin.on("data", () => {
  leakyRequestHandler(32);
  process.stdout.write("done\n");
});
"#;

const FLAGS: [&str; 1] = ["--interpreted-frames-native-stack"];

/// Removes a perf map planted in the host's /tmp, also when a test fails.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills and reaps a child, also when a test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory under /var/tmp (a namespace's private /tmp does not hide
/// it) that uid 65534 can read.
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.path().join("app.js"), SCRIPT).unwrap();
    d
}

/// A root-only file (in a 0700 directory, mode 0600) written as a perf map
/// naming every address `secret`: read, it would name every JIT frame.
fn root_only_secret(dir: &Path, secret: &str) -> PathBuf {
    let sdir = dir.join("root-only");
    std::fs::create_dir(&sdir).unwrap();
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = sdir.join("secret");
    std::fs::write(&f, format!("0 ffffffffffff {secret}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn secret_for_this_test() -> String {
    format!("HOST-SECRET-{}-{}", std::process::id(), rand_tag())
}

fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

/// Who runs the node process.
#[derive(Clone, Copy, PartialEq, Eq)]
enum As {
    /// Root, as the test.
    Root,
    /// uid 65534 (`setpriv`).
    Nobody,
    /// uid 65534 in a new PID and mount namespace with a private /tmp.
    NobodyInContainer,
}

/// Starts node on the script with `args`; its host pid and stdout lines,
/// once it is ready.
fn spawn_node(dir: &Path, args: &[&str], who: As) -> (Child, u32, Lines) {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let node = format!(
        "{NODE} {} {}/app.js {}",
        FLAGS.join(" "),
        dir.display(),
        quoted.join(" ")
    );
    let nobody = format!("exec setpriv --reuid 65534 --regid 65534 --clear-groups {node}");
    let mut cmd = Command::new(if who == As::NobodyInContainer {
        "unshare"
    } else {
        "sh"
    });
    match who {
        As::Root => cmd.arg("-c").arg(format!("exec {node}")),
        As::Nobody => cmd.arg("-c").arg(nobody),
        As::NobodyInContainer => cmd
            .args(["--pid", "--fork", "--mount-proc", "--mount", "--kill-child"])
            .args(["sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o mode=1777 tmpfs /tmp && {nobody}"
            )),
    };
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    let container = who == As::NobodyInContainer;
    // `exec` all the way: node has the shell's pid, or is pid 1 of its namespace.
    lines.until(
        &format!("ready {}", if container { 1 } else { child.id() }),
        T,
    );
    let host_pid = if container {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    } else {
        child.id()
    };
    (child, host_pid, lines)
}

/// The Buffer bytes under node's ArrayBuffer allocator called from the
/// script's function (named from V8's heap, not from the refused perf map),
/// or from JIT code no one names: the 32 x 256 KiB, counted exactly (malloc
/// mode).
fn buffer_bytes(report: &Value) -> u64 {
    report["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let frames = s["frames"].as_array().unwrap();
            let named = |want: &str| {
                frames
                    .iter()
                    .any(|f| f["symbol"].as_str().is_some_and(|n| n.contains(want)))
            };
            // Made by the script (node makes a few small ones of its own).
            named("NodeArrayBufferAllocator")
                && (named("leakyRequestHandler") || frames.iter().any(|f| f["kind"] == "jit"))
        })
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum()
}

fn warnings(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

fn refused_warning(map: &str, pid: u32) -> String {
    format!("perf map {map} of pid {pid} refused: owned by uid 0, not by the process (uid 65534)")
}

fn record_planted(container: bool) {
    let _lock = require_bpf();
    let dir = shared_dir();
    let secret = secret_for_this_test();
    let target = root_only_secret(dir.path(), &secret);
    let (mut node, pid, lines) = spawn_node(
        dir.path(),
        &[target.to_str().unwrap()],
        if container {
            As::NobodyInContainer
        } else {
            As::Nobody
        },
    );
    let nspid = if container { 1 } else { pid };
    let map = format!("/tmp/perf-{nspid}.map");
    // In a container the map is on its private /tmp, gone with it.
    let _planted = (!container).then(|| Planted(map.clone().into()));
    let mut stdin = node.stdin.take().unwrap();
    let _node = Killed(node);
    let (report, stderr, _) = record_steps(pid, &lines, &mut stdin, dir.path(), &[]);
    let text = serde_json::to_string(&report).unwrap();
    assert!(!text.contains(&secret), "the secret is in the report");
    assert!(!stderr.join("\n").contains(&secret), "{stderr:?}");
    let w = warnings(&report);
    let want = refused_warning(&map, pid);
    assert_eq!(w.iter().filter(|l| **l == want).count(), 1, "{w:#?}");
    // Nothing else lost: the Buffers are all there.
    assert_eq!(buffer_bytes(&report), 32 * 262144);
}

#[test]
fn a_perf_map_symlinked_to_a_host_secret_from_a_container_is_refused() {
    record_planted(true);
}

#[test]
fn a_perf_map_symlinked_to_a_root_only_file_is_refused() {
    record_planted(false);
}

#[test]
fn watch_report_never_shows_a_planted_secret() {
    let _lock = require_bpf();
    let dir = shared_dir();
    let secret = secret_for_this_test();
    let target = root_only_secret(dir.path(), &secret);
    let title = format!("ohpm{}", std::process::id() % 100_000);
    let (mut node, pid, lines) = spawn_node(
        dir.path(),
        &[target.to_str().unwrap(), &title],
        As::NobodyInContainer,
    );
    let mut stdin = node.stdin.take().unwrap();
    let _node = Killed(node);
    let mut agent = Agent::start(&["--comm", &title, "--interval", "0.5"]);
    agent.wait_tracing(pid);
    poke(&mut stdin);
    lines.until("done", T);
    // Two sampling intervals: the Buffers are in the next report.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, body) = agent.get(&format!("/report?pid={pid}"));
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = agent.get("/metrics");
    let stderr = agent.err.drain().join("\n");
    assert!(!body.contains(&secret), "the secret is in /report");
    assert!(!metrics.contains(&secret));
    assert!(!stderr.contains(&secret));
    let report = parse_report(&body);
    let w = warnings(&report);
    let want = refused_warning("/tmp/perf-1.map", pid);
    assert!(w.contains(&want), "{w:#?}");
    assert_eq!(agent.stop(), Some(0));
}

/// One 10 MB line naming every address, then 500 000 entries above any user
/// address (so that lookups still reach the first): what a process can
/// write to its own perf map.
fn write_huge_perf_map(path: &str) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"0 ffffffffffff JS:~").unwrap();
    f.write_all(&vec![b'x'; 10_000_000]).unwrap();
    f.write_all(b" /huge.js:1:1\n").unwrap();
    for i in 0..500_000u64 {
        writeln!(
            f,
            "{:x} 10 JS:~f{i} /many.js:{i}:1",
            0xffff_8000_0000_0000 + i * 16
        )
        .unwrap();
    }
    f.flush().unwrap();
}

/// The name an address of that map gets: its first 1024 bytes and the
/// marker.
fn cut_name() -> String {
    format!("JS:~{}…[truncated]", "x".repeat(1020))
}

/// What the map can put in a report: no name longer than the cut one, and
/// any name from its long line exactly the cut one. (node's own JS frames
/// are named from V8's heap when offheap decodes them, and never reach the
/// map; its other code does.)
fn assert_names_bounded(report: &Value) {
    let want = cut_name();
    for f in report["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
    {
        let name = f["symbol"].as_str().unwrap_or("");
        assert!(name.len() <= want.len(), "{} bytes", name.len());
        if name.starts_with("JS:~xxx") {
            assert_eq!(name, want);
        }
    }
}

/// Peak RSS of `record` on a node process with the huge perf map.
/// Bound: the map costs at most 1 KiB for the long name plus 500 001
/// entries x (32 B + ~25 B of name) = 28 MiB; record's own peak on the same
/// node without a perf map is 104 MiB (measured, debug build: node's 100 MB
/// binary mapped, its symbols parsed); with the map 131 MiB. 200 MiB leaves
/// room for both and fails long before a 10 MB name copied into frames could
/// fit: before the bound, each JIT frame carried all 10 MB (16.7 GB peak,
/// an 8.1 GB report, measured with the previous build).
const RECORD_MAX_RSS_KIB: u64 = 200 << 10;

#[test]
fn a_10_mb_perf_map_line_keeps_record_bounded() {
    let _lock = require_bpf();
    let dir = shared_dir();
    let (mut node, pid, lines) = spawn_node(dir.path(), &[], As::Root);
    let map = format!("/tmp/perf-{pid}.map");
    let _planted = Planted(map.clone().into());
    write_huge_perf_map(&map);
    let mut stdin = node.stdin.take().unwrap();
    let _node = Killed(node);
    let (report, stderr, maxrss) = record_steps(pid, &lines, &mut stdin, dir.path(), &[]);
    eprintln!("record peak RSS: {maxrss} KiB");
    assert!(
        maxrss < RECORD_MAX_RSS_KIB,
        "record peaked at {maxrss} KiB; {stderr:?}"
    );
    assert_names_bounded(&report);
    let w = warnings(&report);
    assert!(
        w.contains(&format!(
            "perf map {map}: 1 names longer than 1024 bytes cut short"
        )),
        "{w:#?}"
    );
    // Nothing lost: the Buffers are all there.
    assert_eq!(buffer_bytes(&report), 32 * 262144);
}

/// Blocks the JIT-like stub makes (its fixture's arguments).
const STUB_BLOCKS: u64 = 64;
const STUB_BLOCK_BYTES: u64 = 65536;

/// A program whose allocations go through code only a perf map names (the
/// `jit_stub` fixture): its frame in every such stack is the huge line's
/// name, cut to exactly 1 KiB and the marker, and every byte is under it.
#[test]
fn a_10_mb_perf_map_name_is_cut_to_1_kib_and_the_marker() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_fixture("jit_stub", dir.path());
    let mut child = Command::new(&exe)
        .args([STUB_BLOCKS.to_string(), STUB_BLOCK_BYTES.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = Lines::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let _child = Killed(child);
    let code = lines.until("ready", T);
    assert!(code[0].starts_with("code 0x"), "{code:?}");
    let map = format!("/tmp/perf-{pid}.map");
    let _planted = Planted(map.clone().into());
    write_huge_perf_map(&map);
    let (report, stderr, maxrss) = record_steps(pid, &lines, &mut stdin, dir.path(), &[]);
    assert!(maxrss < RECORD_MAX_RSS_KIB, "{maxrss} KiB; {stderr:?}");
    let want = cut_name();
    assert_eq!(want.len(), 1024 + "…[truncated]".len());
    let under: Vec<&Value> = report["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["symbol"] == want.as_str())
        })
        .collect();
    let bytes: u64 = under
        .iter()
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes, STUB_BLOCKS * STUB_BLOCK_BYTES);
    for s in &under {
        let f = s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["symbol"] == want.as_str())
            .unwrap();
        assert_eq!(
            (f["kind"].as_str(), f["file"].is_null()),
            (Some("js"), true)
        );
    }
    assert_names_bounded(&report);
    // Not node: no "no perf map" advice, only the cut.
    assert_eq!(
        warnings(&report),
        [format!(
            "perf map {map}: 1 names longer than 1024 bytes cut short"
        )]
    );
}

/// VmHWM (peak RSS) of a live process, in KiB (proc(5)).
fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The agent's peak RSS through three /report calls (measured: 150 MiB).
/// Same reasoning as for record; the agent also keeps each target's latest
/// JSON report, whose JIT frames carry 1 KiB names instead of 10 MB ones.
/// The DaemonSet's limit is 512 MiB; this bound is well under it.
const WATCH_MAX_RSS_KIB: u64 = 200 << 10;

#[test]
fn a_10_mb_perf_map_line_keeps_the_watch_agent_bounded() {
    let _lock = require_bpf();
    let dir = shared_dir();
    let title = format!("ohbig{}", std::process::id() % 100_000);
    let (mut node, pid, lines) = spawn_node(dir.path(), &["", &title], As::Root);
    let map = format!("/tmp/perf-{pid}.map");
    let _planted = Planted(map.clone().into());
    write_huge_perf_map(&map);
    let mut stdin = node.stdin.take().unwrap();
    let _node = Killed(node);
    let mut agent = Agent::start(&["--comm", &title, "--interval", "0.5"]);
    agent.wait_tracing(pid);
    poke(&mut stdin);
    lines.until("done", T);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let (code, body) = agent.get(&format!("/report?pid={pid}"));
        assert_eq!(code, 200, "{body}");
        assert!(!body.contains(&"x".repeat(1100)));
        assert_names_bounded(&parse_report(&body));
    }
    let hwm = vm_hwm_kib(agent.child.id());
    eprintln!("watch agent peak RSS: {hwm} KiB");
    assert!(hwm < WATCH_MAX_RSS_KIB, "the agent peaked at {hwm} KiB");
    assert_eq!(agent.stop(), Some(0));
}
