//! Driving processes: fixtures over stdin/stdout, offheap itself (its
//! stderr, its attach, its stop), signals, HTTP.
use super::*;

/// The lines of `r`, read on a thread of their own, as a channel: waits on
/// a child's output can then time out.
pub fn line_channel(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads a child's stdout line by line on a thread, so waits can time out.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(out: ChildStdout) -> Lines {
        let rx = line_channel(out);
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
    assert_exit_0(&o);
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    let sites = parse_sites(&lines);
    (o, sites)
}

/// Asserts that a finished offheap exited 0; its stderr says why not.
#[track_caller]
pub fn assert_exit_0(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
        let rx = line_channel(err);
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
