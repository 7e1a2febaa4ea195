//! Helpers for the end-to-end tests: find the `offheap` binary, serialize BPF
//! tests, build C fixtures, drive fixture processes over stdin/stdout, read
//! JSON reports, and GET over HTTP.
//!
//! BPF tests never skip: without root, BTF or uprobes they fail (that is the
//! point of an end-to-end test of a tracer).
use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<workspace>/target/debug/offheap`, or $OFFHEAP_BIN.
pub fn offheap_bin() -> PathBuf {
    let p = std::env::var_os("OFFHEAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/offheap"));
    assert!(
        p.exists(),
        "{} not found: run `cargo build -p tracer` first (or set OFFHEAP_BIN)",
        p.display()
    );
    p
}

/// Held for the whole of a BPF test: one test at a time touches the kernel.
pub struct BpfLock(#[allow(dead_code)] File);

pub fn bpf_lock() -> BpfLock {
    let f = File::create(std::env::temp_dir().join("offheap-e2e.lock")).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    BpfLock(f)
}

/// Fails (never skips) when the machine cannot run BPF tests.
pub fn require_bpf() -> BpfLock {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "BPF end-to-end tests need root (CAP_BPF, CAP_PERFMON, ...)"
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "no kernel BTF: BPF end-to-end tests cannot run here"
    );
    bpf_lock()
}

/// Compiles tests/fixtures/<name>.c with frame pointers and no sibling calls,
/// so that each site's allocation call returns into the site.
pub fn build_fixture(name: &str, dir: &Path) -> PathBuf {
    compile_fixture("cc", &format!("{name}.c"), &["-pthread"], dir.join(name))
}

/// tests/fixtures/leaky_addon.c built as `leaky.node` in `dir` (N-API:
/// one build runs on every node version).
pub fn build_leaky_addon(dir: &Path) -> PathBuf {
    compile_addon(
        &workspace().join("tests/fixtures/leaky_addon.c"),
        dir.join("leaky.node"),
    )
}

/// An N-API addon from C source `src`, as node-gyp would build it minus
/// its optimisation (frame pointers kept), into `out`.
fn compile_addon(src: &Path, out: PathBuf) -> PathBuf {
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer"])
        .arg("-I/usr/include/node")
        .arg(src)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("running cc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The file name of a report frame's module ("" when it has none).
pub fn module_file(f: &Value) -> &str {
    let m = f["module"].as_str().unwrap_or("");
    m.rsplit('/').next().unwrap_or(m)
}

/// The C++ runtime a C++ fixture is built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CxxRuntime {
    /// GCC's libstdc++ (g++).
    Libstdcxx,
    /// LLVM's libc++ and libc++abi (clang++ -stdlib=libc++).
    Libcxx,
}

/// Compiles tests/fixtures/<name>.cc the same way as `build_fixture`, in
/// `dir`, linked against the shared C++ runtime `rt` of the system.
pub fn build_cxx_fixture(name: &str, dir: &Path, rt: CxxRuntime) -> PathBuf {
    let (compiler, extra): (&str, &[&str]) = match rt {
        CxxRuntime::Libstdcxx => ("g++", &[]),
        CxxRuntime::Libcxx => ("clang++-19", &["-stdlib=libc++"]),
    };
    compile_fixture(compiler, &format!("{name}.cc"), extra, dir.join(name))
}

fn compile_fixture(compiler: &str, file: &str, extra: &[&str], out: PathBuf) -> PathBuf {
    let src = workspace().join("tests/fixtures").join(file);
    let o = Command::new(compiler)
        .args([
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-Wall",
            "-Werror",
        ])
        .args(extra)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        o.status.success(),
        "{compiler} {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Function sizes from `nm -S` (name -> size in bytes).
pub fn symbol_sizes(bin: &Path) -> HashMap<String, u64> {
    let o = Command::new("nm")
        .arg("-S")
        .arg("--defined-only")
        .arg(bin)
        .output()
        .expect("running nm");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[3].to_string(), u64::from_str_radix(f[1], 16).unwrap()))
        })
        .collect()
}

/// Reads a child's stdout line by line on a thread, so waits can time out.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(out: ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The first line that starts with `prefix` (earlier ones are
    /// dropped); panics after `timeout`.
    pub fn starting_with(&self, prefix: &str, timeout: Duration) -> String {
        loop {
            match self.rx.recv_timeout(timeout) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("waiting for a line starting with {prefix:?}: {e}"),
            }
        }
    }

    /// Lines up to and including `want`; panics after `timeout`.
    pub fn until(&self, want: &str, timeout: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.rx.recv_timeout(timeout) {
                Ok(l) if l == want => return seen,
                Ok(l) => seen.push(l),
                Err(e) => panic!("waiting for {want:?}: {e} (saw {seen:?})"),
            }
        }
    }
}

/// Parses the fixture's "site <name> <addr>" lines.
pub fn parse_sites(lines: &[String]) -> HashMap<String, u64> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "site").then_some(())?;
            let name = f.next()?.to_string();
            let addr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((name, addr))
        })
        .collect()
}

/// Runs a self-running fixture (it prints its "site <name> <addr>" lines,
/// allocates, prints "done" and exits 0) under `offheap run --mode malloc`,
/// writing the report in `format` to `out`, with extra environment `env` for
/// the tracer. Checks that both exited 0 and the fixture finished; returns
/// the tracer's output and the sites.
pub fn run_malloc_fixture(
    bin: &Path,
    out: &Path,
    format: &str,
    env: &[(&str, &str)],
) -> (Output, HashMap<String, u64>) {
    let o = Command::new(offheap_bin())
        .args(["run", "--mode", "malloc", "--no-live", "--format", format])
        .args(["--output", out.to_str().unwrap(), "--"])
        .arg(bin)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    let sites = parse_sites(&lines);
    (o, sites)
}

/// Sends one byte to a fixture's stdin.
pub fn poke(stdin: &mut ChildStdin) {
    stdin.write_all(b"x").unwrap();
    stdin.flush().unwrap();
}

/// Waits for the offheap stderr line that says every probe is attached;
/// returns it. Reads stderr on a thread and keeps the rest for later.
pub struct Stderr {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Stderr {
    pub fn new(err: std::process::ChildStderr) -> Stderr {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Stderr {
            rx,
            seen: Vec::new(),
        }
    }

    pub fn wait_attached(&mut self, timeout: Duration) -> String {
        loop {
            match self.rx.recv_timeout(timeout) {
                Ok(l) if l.starts_with("offheap: attached to PID") => return l,
                Ok(l) => self.seen.push(l),
                Err(e) => panic!(
                    "offheap never attached: {e}; stderr so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Everything printed until stderr closes.
    pub fn rest(mut self) -> Vec<String> {
        while let Ok(l) = self.rx.recv_timeout(Duration::from_secs(60)) {
            self.seen.push(l);
        }
        self.seen
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// A process that sleeps until killed: a target that allocates nothing.
pub fn sleeper() -> Child {
    Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs offheap to completion with the given arguments.
pub fn offheap(args: &[&str]) -> Output {
    Command::new(offheap_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
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

/// What a fixture documents of one site: (function, live_bytes,
/// live_allocs, total_bytes, total_allocs).
pub type SiteFigures<'a> = (&'a str, u64, u64, u64, u64);

/// (site, live_bytes, live_allocs, total_bytes, total_allocs) as basic.c
/// documents them. pvalloc counts whole pages (the tool's definition, like
/// glibc's); mmap counts what is still mapped after the partial munmap.
pub const BASIC_SITES: &[SiteFigures] = &[
    ("site_malloc", 3000, 3, 3000, 3),
    ("site_malloc_freed", 0, 0, 3108, 4),
    ("site_calloc", 1000, 1, 1000, 1),
    // malloc 100 -> realloc 200 -> 5000 -> 300; realloc(NULL, 64); malloc 128
    // then realloc(q, 0), which frees q and records nothing.
    ("site_realloc", 364, 2, 100 + 200 + 5000 + 300 + 64 + 128, 6),
    ("site_reallocarray", 600, 1, 300 + 600, 2),
    ("site_posix_memalign", 1024, 1, 1024, 1),
    ("site_aligned_alloc", 2048, 1, 2048, 1),
    ("site_memalign", 3000, 1, 3000, 1),
    ("site_valloc", 5000, 1, 5000, 1),
    ("site_pvalloc", 8192, 1, 8192, 1),
    ("site_mmap", 12 * 4096, 1, 16 * 4096, 1),
    ("site_mmap_shared", 0, 0, 0, 0),
    ("site_mmap_reserve", 0, 0, 0, 0),
    // mmap 4 pages, then mremap to 8: one mapping, grown under its stack.
    ("site_mremap", 8 * 4096, 1, 8 * 4096, 1),
    ("site_syscall_mmap", 2 * 4096, 1, 2 * 4096, 1),
    ("site_brk", 16 * 4096, 1, 16 * 4096, 1),
    ("site_churn", 0, 0, 200_000 * 64, 200_000),
    ("site_thread", 4321, 1, 4321, 1),
];

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

/// Compiles the C source of a node addon (N-API, against node's headers in
/// /usr/include/node) into `dir/<name>.node`, with frame pointers and
/// symbols so that its functions name their frames.
pub fn build_napi_addon(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    compile_addon(&src, dir.join(format!("{name}.node")))
}

/// Starts a fixture process with stdin and stdout piped and waits for its
/// "ready" line; returns it, its stdout reader and the lines before "ready".
pub fn start_fixture(cmd: &mut Command, timeout: Duration) -> (Child, Lines, Vec<String>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    let before = lines.until("ready", timeout);
    (child, lines, before)
}

/// Spawns `offheap` with these arguments (and environment), its stdio
/// piped, and waits for its "attached" line; returns it, that line and the
/// rest of its stderr.
pub fn spawn_attached(tracer: &mut Command, timeout: Duration) -> (Child, String, Stderr) {
    let mut child = tracer
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(child.stderr.take().unwrap());
    let line = err.wait_attached(timeout);
    (child, line, err)
}

/// (status, body) of an HTTP/1.0 GET; (0, "") when nothing answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits for a child and returns its exit status and peak resident set
/// size in KiB (wait4(2) fills `ru_maxrss` in kilobytes, getrusage(2)).
pub fn wait_maxrss(child: &mut Child) -> (ExitStatus, u64) {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; the pid is our child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    // SAFETY: valid pointers to a status int and a rusage.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    (ExitStatus::from_raw(status), ru.ru_maxrss as u64)
}

/// Starts `offheap record --pid PID --mode malloc` writing its JSON report
/// to `out`, its stderr read on a thread; returns it and that stderr.
pub fn spawn_record_malloc(pid: u32, out: &Path) -> (Child, Stderr) {
    let mut tracer = Command::new(offheap_bin())
        .args(["record", "--pid", &pid.to_string(), "--mode", "malloc"])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Stderr::new(tracer.stderr.take().unwrap());
    (tracer, err)
}

/// Attaches `record --pid PID --mode malloc` (plus `extra` arguments) to a
/// process waiting at "ready", pokes it, waits for "done", stops the tracer
/// with SIGINT and returns the JSON report, the tracer's stderr and its peak
/// RSS in KiB.
pub fn record_steps(
    pid: u32,
    lines: &Lines,
    stdin: &mut ChildStdin,
    dir: &Path,
    extra: &[&str],
) -> (Value, Vec<String>, u64) {
    record_steps_in("malloc", pid, lines, stdin, dir, extra)
}

/// `record_steps` in `mode` (malloc or resident).
pub fn record_steps_in(
    mode: &str,
    pid: u32,
    lines: &Lines,
    stdin: &mut ChildStdin,
    dir: &Path,
    extra: &[&str],
) -> (Value, Vec<String>, u64) {
    let out = dir.join("report.json");
    let mut tracer = Command::new(offheap_bin())
        .args(["record", "--pid", &pid.to_string(), "--mode", mode])
        .args(["--interval", "0.2", "--format", "json", "--output"])
        .arg(&out)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(Duration::from_secs(120));
    poke(stdin);
    lines.until("done", Duration::from_secs(120));
    signal(&tracer, libc::SIGINT);
    let (status, maxrss) = wait_maxrss(&mut tracer);
    let rest = err.rest();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    (read_report(&out), rest, maxrss)
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

/// Every BPF program id loaded in the kernel (bpf(2) BPF_PROG_GET_NEXT_ID).
pub fn bpf_prog_ids() -> Vec<u32> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    // union bpf_attr for the GET_NEXT_ID commands: start_id, next_id, open_flags.
    let mut attr = [0u32; 3];
    let mut ids = Vec::new();
    loop {
        // SAFETY: bpf(2) reads start_id and writes next_id in our 12-byte attr.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r != 0 {
            return ids; // ENOENT: no next id
        }
        ids.push(attr[1]);
        attr[0] = attr[1];
    }
}

/// The BPF programs a process holds (`prog_id:` in the fdinfo of its BPF
/// program and link descriptors).
pub fn progs_held_by(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub fn uprobe_events() -> Vec<String> {
    std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// How many BPF links a process holds (fds whose fdinfo has `link_id:`):
/// a link exists once a program is attached.
pub fn links_held_by(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|t| t.lines().any(|l| l.starts_with("link_id:")))
                .count()
        })
        .unwrap_or(0)
}

/// Stops a `record` with SIGINT, as Ctrl-C does: it must write its report
/// and exit 0. Returns the rest of its stderr.
pub fn stop_record(tracer: &mut Child, err: Stderr) -> Vec<String> {
    signal(tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    let rest = err.rest();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:?}");
    rest
}

/// Waits until offheap (`tracer`) has attached its system-wide programs
/// (it holds a BPF link), then 200 ms more, into the attach of its target;
/// panics if it exits first or takes over 120 s.
pub fn wait_attaching(tracer: &mut Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while links_held_by(tracer.id()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "offheap never attached"
        );
        assert_eq!(tracer.try_wait().unwrap(), None, "offheap exited");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
}

/// The processes whose uprobes a process holds: the `pid:` of its
/// uprobe_multi links' fdinfo (Linux 6.9+; malloc mode attaches one set of
/// links per traced process).
pub fn uprobe_pids_held_by(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|t| t.contains("uprobe_multi"))
                .filter_map(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("pid:"))
                        .and_then(|v| v.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v.dedup();
    v
}

/// Waits until every program in `progs` is freed by the kernel (after its
/// last reference went, an RCU grace period later); returns those still
/// loaded after 10 s.
pub fn progs_left(progs: &[u32]) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = bpf_prog_ids();
        let left: Vec<u32> = progs.iter().copied().filter(|p| now.contains(p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A static, stripped program that sleeps until killed: it maps no module
/// that names malloc, so `record --pid` of it waits in the attach (for a
/// dynamic linker that never maps libc) until it gives up, 2 s later.
pub fn static_sleeper(dir: &Path) -> Child {
    let src = dir.join("static_sleeper.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )
    .unwrap();
    let bin = dir.join("static_sleeper");
    let o = Command::new("cc")
        .args(["-static", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Command::new(&bin).stdin(Stdio::null()).spawn().unwrap()
}
