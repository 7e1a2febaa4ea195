//! Resident-mode tests of the kernel programs and the accounting model on
//! their own, against the real kernel: the one loader (`probes::Probes`)
//! with resident mode's programs attached and one target registered, and
//! the model driven by hand (no tracing core, no symbolizer).
#![allow(dead_code)]
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::PerCpuArray;
use offheap::{
    accounting::resident::{DrainStats, Resident, ResidentMaps},
    probes::{LoadConfig, Probes},
    report::{raw::RawProcess, Bucket, Mode},
};
use tracer_common::{maps, TARGET_FAULTS};

pub struct Tracer {
    probes: Probes,
    pub maps: ResidentMaps,
    pub procs: HashMap<u32, Resident>,
    pub stats: DrainStats,
    pub drain_time: std::time::Duration,
}

impl Tracer {
    /// Panics (fails the test) when BPF is unavailable: never skips.
    pub fn attach(pid: u32) -> Tracer {
        Self::attach_sampled(pid, 1)
    }

    /// Attaches with the kernel taking 1 in `sample_every` first-touch stacks.
    pub fn attach_sampled(pid: u32, sample_every: u32) -> Tracer {
        let mut probes =
            Probes::load(&LoadConfig::from_env(Mode::Resident)).expect("load BPF object");
        probes
            .attach_mode()
            .expect("attach resident mode's programs");
        let mut maps = ResidentMaps::take(probes.ebpf_mut()).unwrap();
        maps.set_sample_every(sample_every).unwrap();
        probes.add_target(pid, TARGET_FAULTS).unwrap();
        let mut procs = HashMap::new();
        procs.insert(pid, Resident::start_sampled(pid, sample_every).unwrap());
        Tracer {
            probes,
            maps,
            procs,
            stats: DrainStats::default(),
            drain_time: Default::default(),
        }
    }

    /// Records the kernel side could not send (ring buffer full).
    pub fn lost_events(&self) -> u64 {
        let c: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.probes.ebpf().map(maps::COUNTERS).unwrap()).unwrap();
        c.get(&(tracer_common::Counter::EventsLost as u32), 0)
            .unwrap()
            .iter()
            .sum()
    }

    pub fn drain(&mut self) {
        let t = std::time::Instant::now();
        let s = self.maps.drain(&mut self.procs);
        self.drain_time += t.elapsed();
        self.stats.faults += s.faults;
        self.stats.fault_stacks += s.fault_stacks;
        self.stats.maps += s.maps;
        self.stats.ignored += s.ignored;
        self.stats.malformed += s.malformed;
    }

    pub fn sample(&mut self, classify: &mut dyn FnMut(u32, &[u64]) -> Bucket) {
        self.drain();
        for p in self.procs.values_mut() {
            p.sample(classify);
        }
    }

    pub fn finish(
        mut self,
        pid: u32,
        classify: &mut dyn FnMut(u32, &[u64]) -> Bucket,
    ) -> RawProcess {
        self.drain();
        let maps = &self.maps;
        self.procs
            .get_mut(&pid)
            .unwrap()
            .finish(classify, &mut |g| maps.skip_range(pid, g))
    }
}

/// Compiles a C fixture from the workspace's tests/fixtures into a temp dir.
pub fn compile(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-g", "-no-pie", "-fno-omit-frame-pointer"])
        .args(extra)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc");
    assert!(st.success(), "cc {name}.c failed");
    out
}

/// [start, end) of every function symbol of an ELF file, from `nm -C -S`.
pub fn symbols(path: &Path) -> Vec<(u64, u64, String)> {
    let out = Command::new("nm")
        .args(["-C", "-S", "--defined-only"])
        .arg(path)
        .output()
        .expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            let a = u64::from_str_radix(it.next()?, 16).ok()?;
            let s = u64::from_str_radix(it.next()?, 16).ok()?;
            let t = it.next()?;
            if !matches!(t, "t" | "T" | "W" | "w") {
                return None;
            }
            Some((a, a + s, it.next()?.to_string()))
        })
        .collect()
}

/// The name of the symbol containing `addr`.
pub fn symbol_at(syms: &[(u64, u64, String)], addr: u64) -> Option<&str> {
    syms.iter()
        .find(|(s, e, _)| addr >= *s && addr < *e)
        .map(|(_, _, n)| n.as_str())
}

/// Names addresses of the non-PIE /usr/bin/node with `nm -C` and classifies
/// stacks with the real `classify` rules (the test stand-in for the
/// symbolizer another part of offheap provides).
pub struct NodeSymbols {
    syms: Vec<(u64, u64, String)>,
}

pub const NODE: &str = "/usr/bin/node";

impl NodeSymbols {
    pub fn load() -> NodeSymbols {
        let mut syms = symbols(Path::new(NODE));
        syms.sort();
        NodeSymbols { syms }
    }

    pub fn name(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|(s, _, _)| *s <= addr);
        let (s, e, n) = self.syms.get(i.checked_sub(1)?)?;
        (addr >= *s && addr < *e).then_some(n.as_str())
    }

    pub fn frames(&self, ips: &[u64]) -> Vec<offheap::report::Frame> {
        ips.iter()
            .map(|ip| {
                let mut f = offheap::report::Frame::unknown(*ip);
                if let Some(n) = self.name(*ip) {
                    f.symbol = Some(n.to_string());
                    f.module = Some(NODE.to_string());
                }
                f
            })
            .collect()
    }

    pub fn classify(&self, ips: &[u64]) -> Bucket {
        offheap::classify::classify(&self.frames(ips))
    }
}
