//! The bench's `attach` part: how long a user waits for the tracer, as they
//! see it. Attach time is from the tracer's start to its "attached" line;
//! exit time is from the end of `--duration` (the attached line plus the
//! duration) to the process's exit, report written and every probe
//! detached. Both modes of `offheap record --pid`, against bpftrace's time
//! to ready with what malloc mode traces: malloc/calloc/realloc/free
//! uprobes and the mmap tracepoint, each keyed by its user stack (its
//! BEGIN probe runs once every probe is attached, so "ready" printed there
//! is the moment it traces). The target is one node process allocating a
//! Buffer every 20 ms. Medians over several runs; prints, never asserts.
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::stats::median;

/// How long each traced run lasts once attached.
const DURATION: Duration = Duration::from_secs(1);
/// Longest wait for one run's ready line or exit.
const TIMEOUT: Duration = Duration::from_secs(120);
const TARGET_JS: &str = "setInterval(() => { globalThis.kept = Buffer.alloc(65536); }, 20); \
                         console.log('ready');";

/// One run's attach and exit times, in seconds.
#[derive(Clone, Copy, Debug)]
struct Timing {
    attach: f64,
    exit: f64,
}

/// Runs the part: `runs` runs of each tracer, alternating, on one target.
pub fn run(offheap: &Path, libc: &Path, runs: u32) -> Result<()> {
    let mut target = Target::start()?;
    let pid = target.0.id();
    let tmp = std::env::temp_dir().join(format!("offheap-bench-attach-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let out = tmp.join("report.json");
    let mut bt = Vec::new();
    let mut malloc = Vec::new();
    let mut resident = Vec::new();
    for _ in 0..runs {
        bt.push(bpftrace(pid, libc)?);
        malloc.push(offheap_record(offheap, pid, "malloc", &out)?);
        resident.push(offheap_record(offheap, pid, "resident", &out)?);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    target.stop();

    let med = |v: &[Timing], f: fn(&Timing) -> f64| {
        median(&v.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let (bt_attach, bt_exit) = (med(&bt, |t| t.attach), med(&bt, |t| t.exit));
    println!();
    println!(
        "bench attach: node target (pid {pid}), {runs} runs each, --duration {} s, medians",
        DURATION.as_secs()
    );
    println!(
        "  bpftrace (malloc/calloc/realloc/free uprobes + sys_enter_mmap, ustack): ready {bt_attach:.2} s, exit {bt_exit:.2} s"
    );
    for (name, v) in [("malloc", &malloc), ("resident", &resident)] {
        let (a, e) = (med(v, |t| t.attach), med(v, |t| t.exit));
        println!(
            "  offheap record --mode {name:<8}: attached {a:.2} s ({:.2}x bpftrace's ready), exit {e:.2} s ({:.2}x bpftrace's)",
            a / bt_attach,
            e / bt_exit
        );
    }
    let all = |v: &[Timing]| {
        v.iter()
            .map(|t| format!("{:.2}/{:.2}", t.attach, t.exit))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  every run (attach/exit s): bpftrace {}; malloc {}; resident {}",
        all(&bt),
        all(&malloc),
        all(&resident)
    );
    Ok(())
}

/// The node process every run traces; killed on drop.
struct Target(Child);

impl Target {
    fn start() -> Result<Target> {
        let mut child = Command::new("node")
            .args(["-e", TARGET_JS])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start node")?;
        let stdout = child.stdout.take().expect("piped");
        let mut target = Target(child);
        let rx = lines(stdout);
        wait_line(&rx, |l| l == "ready").context("the node target never became ready")?;
        // Keep its pipe drained (it prints nothing more).
        thread::spawn(move || while rx.recv().is_ok() {});
        target.check_alive()?;
        Ok(target)
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.0.try_wait()? {
            None => Ok(()),
            Some(st) => bail!("the node target exited ({st})"),
        }
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `offheap record --pid PID --mode MODE --duration 1`: attach from the start
/// to the "attached" line on stderr, exit from that line plus the duration
/// to the exit.
fn offheap_record(offheap: &Path, pid: u32, mode: &str, out: &Path) -> Result<Timing> {
    let start = Instant::now();
    let mut child = Command::new(offheap)
        .args(["record", "--pid", &pid.to_string(), "--mode", mode])
        .args(["--duration", &DURATION.as_secs_f64().to_string()])
        .args(["--no-live", "--format", "json", "--output"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {}", offheap.display()))?;
    let rx = lines(child.stderr.take().expect("piped"));
    let what = format!("offheap record --mode {mode}");
    timed(&what, &mut child, start, rx, |l| {
        l.starts_with("offheap: attached to PID")
    })
}

/// bpftrace with what malloc mode traces, ended by its own 1 s interval
/// probe: attach from the start to "ready", exit from "ready" plus 1 s to
/// the exit. Its exit time is its detach time only: the interval probe
/// stops the recording (`@stop`) and empties the maps before `exit()`,
/// because bpftrace 0.17 prints its maps on the way out, symbolizing every
/// user stack, and for node's stacks that took it more than 10 minutes at
/// full CPU here for 1 s of recording (about 10 s for a handful of stacks).
/// offheap's exit time includes writing its symbolized report.
fn bpftrace(pid: u32, libc: &Path) -> Result<Timing> {
    let l = libc.display();
    let script = format!(
        "uprobe:{l}:malloc, uprobe:{l}:calloc, uprobe:{l}:realloc, uprobe:{l}:free \
         /pid == {pid} && @stop == 0/ {{ @u[ustack] = count(); }} \
         tracepoint:syscalls:sys_enter_mmap /pid == {pid} && @stop == 0/ {{ @m[ustack] = count(); }} \
         BEGIN {{ printf(\"ready\\n\"); }} \
         interval:s:{} {{ @stop = 1; clear(@u); clear(@m); exit(); }}",
        DURATION.as_secs()
    );
    let start = Instant::now();
    let mut child = Command::new("bpftrace")
        .args(["-e", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("could not start bpftrace (cargo xtask setup installs it)")?;
    let rx = lines(child.stdout.take().expect("piped"));
    timed("bpftrace", &mut child, start, rx, |l| l == "ready")
}

/// Waits for `ready` on `rx`, then for the child's exit; checks it exited 0.
fn timed(
    what: &str,
    child: &mut Child,
    start: Instant,
    rx: mpsc::Receiver<(Instant, String)>,
    ready: impl Fn(&str) -> bool,
) -> Result<Timing> {
    let at = match wait_line(&rx, ready) {
        Ok(at) => at,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.context(format!("{what} never got ready")));
        }
    };
    // The rest is read on a thread, so the child never blocks on a full
    // pipe (bpftrace prints its maps on the way out).
    let (tx, drained) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(rx.iter().map(|(_, l)| l).collect::<Vec<_>>());
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not exit within {} s", TIMEOUT.as_secs());
        }
        thread::sleep(Duration::from_millis(2));
    };
    let exited = Instant::now();
    let rest = drained
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    if !status.success() {
        bail!(
            "{what} failed ({status}): {}",
            rest.last().map(String::as_str).unwrap_or("(no output)")
        );
    }
    Ok(Timing {
        attach: (at - start).as_secs_f64(),
        exit: exited
            .saturating_duration_since(at + DURATION)
            .as_secs_f64(),
    })
}

/// The lines of a pipe, each with the moment it was read, from a thread.
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// The moment of the first line `pred` accepts.
fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    pred: impl Fn(&str) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, l)) if pred(&l) => return Ok(at),
            Ok((_, l)) => seen.push(l),
            Err(e) => return Err(anyhow!("{e}; output: {}", seen.join(" | "))),
        }
    }
}
