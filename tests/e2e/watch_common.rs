//! Helpers of the `watch` end-to-end tests: child v1 memory cgroups removed
//! even when a test fails, the agent as a child process with its stdout and
//! stderr read on threads, node processes started inside a cgroup, and a
//! tiny HTTP client for /metrics, /healthz and /report.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use offheap_e2e::*;

pub const NODE: &str = "/usr/bin/node";
pub const T: Duration = Duration::from_secs(120);

/// The v1 memory cgroup directory of this test process.
pub fn own_memory_cgroup() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .expect("the watch tests need the v1 memory controller (/proc/self/cgroup)");
    let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir
}

/// A child memory cgroup of this test's, removed on drop after killing
/// whatever is left in it.
pub struct Cgroup {
    pub dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it.
    pub path: String,
    pub name: String,
}

impl Cgroup {
    pub fn create(tag: &str, limit: Option<u64>) -> Cgroup {
        let name = format!("offheap-watch-{}{tag}", std::process::id());
        let own = own_memory_cgroup();
        let dir = own.join(&name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let path = format!(
            "/{}",
            dir.strip_prefix("/sys/fs/cgroup/memory").unwrap().display()
        );
        let cg = Cgroup { dir, path, name };
        if let Some(l) = limit {
            cg.write("memory.limit_in_bytes", &l.to_string());
            // Without swap accounting a full cgroup could swap instead of
            // OOM-killing; memsw must be >= the memory limit, set after it.
            if cg.dir.join("memory.memsw.limit_in_bytes").exists() {
                cg.write("memory.memsw.limit_in_bytes", &l.to_string());
            }
        }
        cg
    }

    fn write(&self, file: &str, v: &str) {
        std::fs::write(self.dir.join(file), v)
            .unwrap_or_else(|e| panic!("writing {v} to {file} of {}: {e}", self.dir.display()));
    }

    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Starts `node SCRIPT ARGS` inside this cgroup.
    pub fn spawn_node(&self, script: &Path, args: &[String]) -> Child {
        let mut all = vec![script.display().to_string()];
        all.extend_from_slice(args);
        self.spawn(Path::new(NODE), &all)
    }

    /// Starts `PROGRAM ARGS` inside this cgroup, stdin and stdout piped: the
    /// shell moves itself in, then execs the program (same pid), so nothing
    /// of it runs outside. glibc's mmap threshold is pinned at its default
    /// of 128 KiB: a free of a bigger mmap'd chunk raises it to that chunk's
    /// size (malloc/malloc.c, free's dynamic threshold; not once set by
    /// the tunable), after which a Buffer the tests count as a mapping of
    /// its own may come from the heap.
    pub fn spawn(&self, program: &Path, args: &[String]) -> Child {
        Command::new("/bin/sh")
            .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(&self.dir)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `spawn_node`, then waits for the script's "ready" line.
    pub fn start_node(&self, script: &Path, args: &[String]) -> Node {
        let mut child = self.spawn_node(script, args);
        let mut out = Stream::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        out.until("ready", T, |l| l == "ready");
        Node { child, out, stdin }
    }
}

/// A node process started in a cgroup, past its "ready" line.
pub struct Node {
    pub child: Child,
    pub out: Stream,
    pub stdin: ChildStdin,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a line and waits for the script to answer `want`.
    pub fn poke_until(&mut self, want: &str) {
        poke_line(&mut self.stdin);
        self.out.until(want, T, |l| l == want);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let procs = self.procs();
            if procs.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in procs {
                // SAFETY: kill(2) on pids listed in our own test cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(50));
        }
        // rmdir(2) fails with EBUSY while a dying task is still charged.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// Lines of a child's pipe, read on a thread.
pub struct Stream {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Stream {
    pub fn new(r: impl Read + Send + 'static) -> Stream {
        Stream {
            rx: line_channel(r),
            seen: Vec::new(),
        }
    }

    /// The first line from now on that `pred` accepts; panics after `timeout`.
    pub fn until(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e}; lines so far: {:#?}", self.seen),
            }
        }
    }

    /// Whatever arrived so far, without waiting.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }
}

/// `offheap watch` as a child; SIGTERM and reaped on drop.
pub struct Agent {
    pub child: Child,
    pub out: Stream,
    pub err: Stream,
    pub addr: String,
}

impl Agent {
    /// Starts the agent on a free port and waits until /healthz says ready.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_env(args, &[])
    }

    /// As `start`, with extra environment variables for the agent.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(offheap_bin())
            .arg("watch")
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Stream::new(child.stdout.take().unwrap());
        let mut err = Stream::new(child.stderr.take().unwrap());
        let line = err.until("the metrics address", T, |l| {
            l.starts_with("offheap: serving metrics on http://")
        });
        let addr = line
            .trim_start_matches("offheap: serving metrics on http://")
            .trim_end_matches("/metrics")
            .to_string();
        let mut agent = Agent {
            child,
            out,
            err,
            addr,
        };
        let deadline = Instant::now() + T;
        while agent.get("/healthz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "/healthz never became 200: {:#?}",
                agent.err.drain()
            );
            if let Ok(Some(st)) = agent.child.try_wait() {
                panic!("watch exited with {st}: {:#?}", agent.err.drain());
            }
            thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    /// (status, body) of a GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// Waits until the agent traces the program `pid` runs now: its latest
    /// "tracing PID N (COMM)," line names the COMM that /proc/N/comm has.
    /// The agent may first trace the shell that moved itself into the cgroup
    /// (it re-adds the pid when it reads the exec event), and a pid may be
    /// waited for before its exec (its comm is the test thread's then).
    pub fn wait_tracing(&mut self, pid: u32) {
        let want = format!("offheap: tracing PID {pid} (");
        let failed = format!("offheap: cannot trace PID {pid} ");
        let deadline = Instant::now() + T;
        loop {
            let latest = self
                .err
                .drain()
                .iter()
                .rev()
                .find(|l| l.starts_with(&want) || l.starts_with(&failed))
                .cloned();
            if let Some(l) = latest {
                assert!(l.starts_with(&want), "{l}");
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if l[want.len()..].starts_with(&format!("{}),", comm.trim_end())) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "PID {pid} never traced as its current program; stderr: {:#?}",
                self.err.seen
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (0 expected).
    pub fn stop(mut self) -> Option<i32> {
        signal(&self.child, libc::SIGTERM);
        let st = self.child.wait().unwrap();
        st.code()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Value of the sample whose name and labels are exactly `series`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

pub fn poke_line(stdin: &mut ChildStdin) {
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
}
