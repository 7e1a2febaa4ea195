//! Real BPF in the real kernel: the lifecycle programs see a tracked child
//! exec, fork and exit, and a real memory-cgroup OOM kill.
//!
//! Needs root and BPF; without them these tests fail (they never skip).
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use offheap::{
    accounting::counters,
    core::events::{decode, Drainer, LifecycleEvent, OomVictim, RingEvent},
    daemon::{
        cgroup::{memory_cgroup_of, Mounts, Version},
        oom::{postmortem, Owner},
        targets::Tracked,
    },
    probes::{LoadConfig, Probes},
    report::{self, Mode, ProcessReport, Report},
};
use tracer_common::{maps, Counter};

/// Guards against a hang, never asserted on: every wait ends in a failure.
const GIVE_UP: Duration = Duration::from_secs(60);

fn compile(dir: &Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    fs::write(&c, src).unwrap();
    let st = Command::new("cc")
        .args(["-O0", "-g", "-o"])
        .arg(&bin)
        .arg(&c)
        .status()
        .expect("running cc");
    assert!(st.success(), "cc failed on {name}.c");
    bin
}

/// The lifecycle programs through the one loader, and their ring buffer
/// read by hand.
struct LifecycleTracer {
    events: Option<RingBuf<MapData>>,
    probes: Probes,
}

impl LifecycleTracer {
    /// `watch_exec`: report every exec on the host (and every OOM victim).
    fn load(watch_exec: bool) -> Result<LifecycleTracer, offheap::probes::ProbeError> {
        let cfg = LoadConfig {
            watch_exec,
            ..LoadConfig::from_env(Mode::Resident)
        };
        let mut probes = Probes::load(&cfg)?;
        probes.attach_mode()?;
        let map = probes.ebpf_mut().take_map(maps::EVENTS).unwrap();
        Ok(LifecycleTracer {
            events: Some(RingBuf::try_from(map).unwrap()),
            probes,
        })
    }

    /// Reports exec, exit, fork and OOM kill of `tgid` from now on.
    fn track(&mut self, tgid: u32) -> Result<(), offheap::probes::ProbeError> {
        self.probes.add_target(tgid, 0)
    }

    /// The next pending lifecycle event, if any (never blocks).
    fn next_event(&mut self) -> Option<LifecycleEvent> {
        let ring = self.events.as_mut()?;
        while let Some(item) = ring.next() {
            if let Some(RingEvent::Life(ev)) = decode(&item) {
                return Some(ev);
            }
        }
        None
    }

    /// A counter summed over CPUs.
    fn counter(&self, c: Counter) -> Option<u64> {
        counters::read(self.probes.ebpf())
            .ok()?
            .0
            .get(c.name())
            .copied()
    }
}

/// Waits for the first event `pick` accepts; fails the test on give-up.
fn wait_for<T>(
    t: &mut LifecycleTracer,
    what: &str,
    mut pick: impl FnMut(&LifecycleEvent) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        while let Some(ev) = t.next_event() {
            if let Some(v) = pick(&ev) {
                return v;
            }
        }
        assert!(start.elapsed() < GIVE_UP, "no {what} event arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LIFE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    pid_t c = fork();
    if (c == 0) _exit(0);
    waitpid(c, NULL, 0);
    printf("%d\n", (int)c);
    fflush(stdout);
    return 3;
}
"#;

#[test]
fn tracked_child_exec_fork_exit() {
    let dir = tempfile::tempdir().unwrap();
    let life = compile(dir.path(), "offheap_life", LIFE_C);
    let mut t = LifecycleTracer::load(false).expect("loading the lifecycle BPF programs");

    // The shell waits on stdin, so it is tracked before it execs the fixture.
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!("read x; exec {}", life.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sh.id();
    t.track(pid).unwrap();
    writeln!(sh.stdin.take().unwrap(), "go").unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    let status = sh.wait().unwrap();
    assert_eq!(status.code(), Some(3));

    // spawn() returns once the child released our address space in execve,
    // which can be before sched_process_exec fires for sh itself: skip that one.
    let comm = wait_for(&mut t, "exec", |e| match e {
        LifecycleEvent::Exec { tgid, comm, .. } if *tgid == pid && comm != "sh" => {
            Some(comm.clone())
        }
        _ => None,
    });
    assert_eq!(comm, "offheap_life");
    let (child, fork_comm) = wait_for(&mut t, "fork", |e| match e {
        LifecycleEvent::Fork {
            tgid, child, comm, ..
        } if *tgid == pid => Some((*child, comm.clone())),
        _ => None,
    });
    assert_eq!(child, grandchild);
    assert_eq!(fork_comm, "offheap_life");
    let (status, comm) = wait_for(&mut t, "exit", |e| match e {
        LifecycleEvent::Exit {
            tgid,
            wait_status,
            comm,
            ..
        } if *tgid == pid => Some((*wait_status, comm.clone())),
        _ => None,
    });
    // exit(3) => wait status 3 << 8, as waitpid(2) would report it.
    assert_eq!(status, 3 << 8);
    assert_eq!(comm, "offheap_life");
    // The untracked grandchild's exit was not reported.
    while let Some(ev) = t.next_event() {
        assert!(
            !matches!(ev, LifecycleEvent::Exit { tgid, .. } if tgid == grandchild),
            "exit of untracked {grandchild} reported"
        );
    }
    assert_eq!(t.counter(Counter::EventsLost).unwrap(), 0);
}

#[test]
fn watch_exec_reports_untracked_execs() {
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(dir.path(), "offheap_newexe", "int main(void){return 0;}");
    let mut t = LifecycleTracer::load(true).expect("loading the lifecycle BPF programs");
    let mut c = Command::new(&bin).spawn().unwrap();
    let pid = c.id();
    assert!(c.wait().unwrap().success());
    let comm = wait_for(&mut t, "exec", |e| match e {
        LifecycleEvent::Exec { tgid, comm, .. } if *tgid == pid => Some(comm.clone()),
        _ => None,
    });
    assert_eq!(comm, "offheap_newexe");
}

/// A child v1 memory cgroup under our own, removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(limit: u64) -> TestCgroup {
        let mounts = Mounts::of_this_host().unwrap();
        let own = memory_cgroup_of(std::process::id(), &mounts).unwrap();
        assert_eq!(
            own.version,
            Version::V1,
            "this test expects a v1 memory cgroup host"
        );
        let dir = own.dir.join(format!("offheap-test-{}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = TestCgroup { dir };
        fs::write(cg.dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        // Without a memory+swap limit the child would swap rather than be killed
        // on a host with swap; the file only exists with swap accounting.
        let memsw = cg.dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            fs::write(memsw, limit.to_string()).unwrap();
        }
        cg
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a pid we put in this cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

const HOG_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Waits for a byte on stdin (so the test can move it into the cgroup first),
 * then touches 1 MiB blocks until the OOM killer ends it. */
int main(void) {
    char c;
    if (read(0, &c, 1) != 1) return 1;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) return 2;
        memset(p, 1, 1 << 20);
    }
}
"#;

#[test]
fn real_oom_kill_in_a_memory_cgroup() {
    const LIMIT: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let hog = compile(dir.path(), "offheap_hog", HOG_C);
    let mut t = LifecycleTracer::load(false).expect("loading the lifecycle BPF programs");
    let kills_before = t.counter(Counter::OomKills).unwrap();
    let cg = TestCgroup::new(LIMIT);

    let mut child = Command::new(&hog).stdin(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    cg.add(pid);
    t.track(pid).unwrap();
    // What the daemon records when it starts tracing a process.
    let tracked = Tracked::new(pid, &Mounts::of_this_host().unwrap()).unwrap();
    assert_eq!(tracked.cgroup.as_ref().unwrap().dir, cg.dir);
    assert_eq!(
        tracked.owner,
        Owner::Cgroup(format!("offheap-test-{}", std::process::id()))
    );
    child.stdin.take().unwrap().write_all(b"g").unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "hog ended with {status:?}"
    );

    let v: OomVictim = wait_for(&mut t, "oom", |e| match e {
        LifecycleEvent::Oom(v) if v.tgid == pid => Some(v.clone()),
        _ => None,
    });
    assert_eq!(v.comm, "offheap_hog");
    // The victim's anonymous memory is what the limit capped: within the limit,
    // and at least the limit less what other charges (page tables, the binary's
    // file pages, kernel memory) can take of it.
    assert!(
        v.anon_rss_bytes <= LIMIT,
        "anon_rss {} > limit",
        v.anon_rss_bytes
    );
    assert!(
        v.anon_rss_bytes >= LIMIT - (8 << 20),
        "anon_rss {} far below the limit",
        v.anon_rss_bytes
    );
    assert!(v.total_vm_bytes >= v.anon_rss_bytes);
    let wait_status = wait_for(&mut t, "exit", |e| match e {
        LifecycleEvent::Exit {
            tgid, wait_status, ..
        } if *tgid == pid => Some(*wait_status),
        _ => None,
    });
    assert_eq!(wait_status, libc::SIGKILL);
    assert!(t.counter(Counter::OomKills).unwrap() > kills_before);

    // The post-mortem: the kernel's figures, the cgroup's limit, one log line.
    let out = tempfile::tempdir().unwrap();
    let mut r = Report::new(Mode::Resident);
    r.processes.push(ProcessReport {
        pid,
        comm: tracked.info.comm.clone(),
        ..ProcessReport::default()
    });
    let now = std::time::SystemTime::now();
    let (r, w) = postmortem(out.path(), r, &v, tracked.cgroup.as_ref(), now).unwrap();
    let stem = format!(
        "oom-offheap-test-{}-{pid}-{}",
        std::process::id(),
        offheap::daemon::oom::timestamp(now)
    );
    assert_eq!(w.json, out.path().join(format!("{stem}.json")));
    let back = report::json::parse(&fs::read(&w.json).unwrap()).unwrap();
    assert_eq!(back, r);
    let oom = back.oom.unwrap();
    assert_eq!(oom.pid, pid);
    assert_eq!(oom.anon_rss_bytes, v.anon_rss_bytes);
    assert_eq!(oom.memory_limit_bytes, Some(LIMIT));
    assert_eq!(oom.cgroup, Some(tracked.cgroup.unwrap().path));
    assert!(back.processes[0].exited);
    assert!(
        w.log_line.starts_with(&format!(
            "offheap: OOM kill of pid {pid} (offheap_hog) in cgroup offheap-test-{}: report ",
            std::process::id()
        )),
        "{}",
        w.log_line
    );
}

/// The core's drain thread wakes for a record as soon as it is submitted:
/// a tracked process's exit reaches the channel while the test waits on it.
#[tokio::test]
async fn drain_thread_delivers_the_next_event() {
    let mut t = LifecycleTracer::load(false).expect("loading the lifecycle BPF programs");
    let mut sh = Command::new("sh")
        .args(["-c", "read x; exit 7"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sh.id();
    t.track(pid).unwrap();
    let mut stdin = sh.stdin.take().unwrap();
    let (_drainer, mut rx) = Drainer::start(t.events.take().unwrap(), None, None).unwrap();
    let waiter = async {
        loop {
            match rx.recv().await.expect("the drain thread stopped") {
                RingEvent::Life(LifecycleEvent::Exit {
                    tgid, wait_status, ..
                }) if tgid == pid => return wait_status,
                _ => continue,
            }
        }
    };
    // join! polls the waiter first: it finds nothing (sh is blocked in read)
    // and parks on the channel; only then is sh let go.
    let release = async {
        writeln!(stdin, "go").unwrap();
    };
    let (status, ()) = tokio::time::timeout(GIVE_UP, async { tokio::join!(waiter, release) })
        .await
        .expect("no exit event arrived");
    assert_eq!(status, 7 << 8);
    sh.wait().unwrap();
}
