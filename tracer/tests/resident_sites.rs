//! Resident mode against a C fixture with known pages per site: real BPF in
//! the real kernel, the accounting model, exact page counts.
mod resident_common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use offheap::report::{Attribution, Bucket};
use resident_common::{compile, symbol_at, symbols, Tracer};

const PAGE: u64 = 4096;

#[test]
fn pages_per_site_match_and_given_back_pages_stop_counting() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "resident_sites", &[]);
    let syms = symbols(&exe);
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let tracer = Tracer::attach(pid);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"g").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("done"), "fixture said {line:?}");
    let mut other = |_: u32, _: &[u64]| Bucket::Other;
    let raw = tracer.finish(pid, &mut other);
    drop(stdin);
    let _ = child.wait();

    // Resident pages per (site, attribution): the site is the innermost
    // frame inside one of the fixture's functions.
    let sites = ["map_site", "malloc_site", "touch_brk", "memset_brk"];
    let mut got: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for s in &raw.stacks {
        let site = s
            .ips
            .iter()
            .find_map(|ip| symbol_at(&syms, *ip).filter(|n| sites.contains(n)));
        if let Some(site) = site {
            let a = match s.attribution {
                Some(Attribution::Mapping) => "mapping",
                Some(Attribution::FirstTouch) => "first_touch",
                None => "none",
            };
            *got.entry((site, a)).or_default() += s.live_bytes / PAGE;
        }
    }
    eprintln!(
        "pages per site: {got:?}\nreconciliation: {:?}",
        raw.reconciliation
    );
    let want = [
        (("map_site", "mapping"), 40),
        (("malloc_site", "mapping"), 513),
        (("touch_brk", "first_touch"), 60),
        (("memset_brk", "first_touch"), 20),
    ];
    for (key, pages) in want {
        let g = got.get(&key).copied().unwrap_or(0);
        assert!(
            g.abs_diff(pages) <= 1,
            "{key:?}: {g} resident pages, want {pages} (+-1); all: {got:?}\nreconciliation: {:?}",
            raw.reconciliation
        );
    }
    // Anything else is glibc's own bookkeeping reached through a site (a
    // chunk header written on a fresh heap page): at most one page each.
    for (key, pages) in &got {
        if !want.iter().any(|(k, _)| k == key) {
            assert!(
                *pages <= 1,
                "unexpected {key:?}: {pages} pages; all: {got:?}"
            );
        }
    }
}
