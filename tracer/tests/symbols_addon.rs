//! A real N-API addon, built here and loaded by node with require().
mod symbols_support;

use offheap::{report::build::Symbolize, symbols::Symbolizer};
use std::{path::Path, process::Command};
use symbols_support::*;

/// `addon_leak` is defined on line 5.
const ADDON: &str = r#"#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) void *addon_leak(size_t n) {
    return malloc(n);
}
static napi_value Leak(napi_env env, napi_callback_info info) {
    addon_leak(1024);
    return NULL;
}
NAPI_MODULE_INIT() {
    printf("addon_leak %p\n", (void *)&addon_leak);
    fflush(stdout);
    napi_value fn;
    napi_create_function(env, "leak", NAPI_AUTO_LENGTH, Leak, NULL, &fn);
    napi_set_named_property(env, exports, "leak", fn);
    return exports;
}
"#;

/// Requires each line of stdin as an addon path.
const DRIVER: &str = r#"
process.stdin.setEncoding('utf8');
let buf = '';
process.stdin.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const path = buf.slice(0, i);
    buf = buf.slice(i + 1);
    require(path).leak();
  }
});
console.log('ready ' + process.pid);
"#;

fn build(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let addon = dir.join("leaky.node");
    let src = cc(
        dir,
        "leaky",
        ADDON,
        &addon,
        &["-shared", "-fPIC", "-g", "-O0", "-I/usr/include/node"],
    );
    let js = dir.join("driver.js");
    std::fs::write(&js, DRIVER).unwrap();
    (addon, src)
}

fn start_node(js: &Path) -> Proc {
    let mut p = Proc::spawn(Command::new("node").arg(js));
    let l = p.line();
    assert!(l.starts_with("ready "), "{l}");
    p
}

#[test]
fn addon_function_name_and_module_path() {
    let dir = workdir("addon");
    let (addon, src) = build(&dir);
    let mut p = start_node(&dir.join("driver.js"));
    p.send(addon.to_str().unwrap());
    let leak = hex(&field(&p.line(), "addon_leak"));

    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    let f = &sym.symbolize(p.pid(), leak + 4)[0];
    assert_eq!(f.symbol.as_deref(), Some("addon_leak"));
    assert_eq!(f.module.as_deref(), Some(addon.to_str().unwrap()));
    assert_eq!(f.file.as_deref(), Some(src.to_str().unwrap()));
    assert_eq!(f.line, Some(5));
}

#[test]
fn refresh_picks_up_an_addon_loaded_after_capture() {
    let dir = workdir("addon-refresh");
    let (addon, _) = build(&dir);
    let mut p = start_node(&dir.join("driver.js"));
    let pid = p.pid();

    let mut refreshed = Symbolizer::new();
    let mut stale = Symbolizer::new();
    refreshed.capture(pid).unwrap();
    stale.capture(pid).unwrap();
    p.send(addon.to_str().unwrap());
    let leak = hex(&field(&p.line(), "addon_leak"));
    refreshed.refresh(pid).unwrap();
    // Kill before symbolizing: only what refresh() captured while node lived counts.
    p.kill();

    let f = &refreshed.symbolize(pid, leak)[0];
    assert_eq!(f.symbol.as_deref(), Some("addon_leak"));
    assert_eq!(f.module.as_deref(), Some(addon.to_str().unwrap()));
    // The control: captured before the dlopen and never refreshed.
    let f = &stale.symbolize(pid, leak)[0];
    assert_eq!(
        (f.symbol.as_ref(), f.module.as_ref()),
        (None, None),
        "{f:?}"
    );
}

#[test]
fn node_binary_symbols_in_a_live_node() {
    let dir = workdir("node-syms");
    build(&dir);
    let p = start_node(&dir.join("driver.js"));
    // node (v20, non-PIE) is linked at its runtime address: take the address
    // of a known function from its own symbol table with nm.
    let nm = Command::new("nm").arg("/usr/bin/node").output().unwrap();
    let nm = String::from_utf8_lossy(&nm.stdout);
    let line = nm
        .lines()
        .find(|l| l.ends_with(" T _ZN4node24NodeArrayBufferAllocator8AllocateEm"))
        .expect("node exports NodeArrayBufferAllocator::Allocate");
    let addr = hex(line.split(' ').next().unwrap());
    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    let node = std::fs::canonicalize("/usr/bin/node").unwrap();
    let f = &sym.symbolize(p.pid(), addr + 8)[0];
    assert_eq!(
        f.symbol.as_deref(),
        Some("node::NodeArrayBufferAllocator::Allocate(unsigned long)")
    );
    assert_eq!(f.module.as_deref(), Some(node.to_str().unwrap()));
}

/// The runtime address of a node function (node v20 is non-PIE: nm's value).
fn node_fn(nm: &str, demangled: &str) -> u64 {
    let line = nm
        .lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.len() > 2 && &rest[2..] == demangled)
        })
        .unwrap_or_else(|| panic!("node has no {demangled}"));
    hex(line.split(' ').next().unwrap())
}

#[test]
fn report_buckets_from_real_addresses_of_node_and_an_addon() {
    use offheap::{
        report::raw::{RawProcess, RawStack},
        report::{
            build::{assemble, Meta},
            Bucket, Mode,
        },
    };
    let dir = workdir("addon-buckets");
    let (addon, _) = build(&dir);
    let mut p = start_node(&dir.join("driver.js"));
    p.send(addon.to_str().unwrap());
    let leak = hex(&field(&p.line(), "addon_leak"));
    let pid = p.pid();
    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    p.kill(); // the report is built after the process died, from the capture

    let nm = Command::new("nm")
        .args(["-C", "/usr/bin/node"])
        .output()
        .unwrap();
    let nm = String::from_utf8_lossy(&nm.stdout).into_owned();
    let ab = node_fn(
        &nm,
        "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
    ) + 4;
    let page = node_fn(
        &nm,
        "v8::internal::MemoryAllocator::AllocatePage(v8::internal::MemoryAllocator::AllocationMode, v8::internal::Space*, v8::internal::Executability)",
    ) + 4;
    let napi = node_fn(&nm, "napi_create_function") + 4;
    let stack = |ips: Vec<u64>, live: u64| RawStack {
        ips,
        live_bytes: live,
        live_allocs: 1,
        total_bytes: live,
        total_allocs: 1,
        ..RawStack::default()
    };
    let raw = RawProcess {
        pid,
        exited: true,
        stacks: vec![
            stack(vec![ab, napi], 1 << 20),
            stack(vec![page, leak + 4, napi], 256 << 10),
            stack(vec![leak + 4, napi], 4096),
            stack(vec![napi], 100),
            stack(vec![0x10], 7),
        ],
        ..RawProcess::default()
    };
    let meta = Meta {
        mode: Mode::Malloc,
        duration_secs: 1.0,
        ..Meta::default()
    };
    let report = assemble(meta, vec![raw], &mut sym);
    let pr = &report.processes[0];
    assert_eq!(pr.buckets.array_buffers, 1 << 20);
    assert_eq!(pr.buckets.v8_heap, 256 << 10);
    assert_eq!(pr.buckets.native_addon, 4096);
    assert_eq!(pr.buckets.node_native, 100);
    assert_eq!(pr.buckets.other, 7);
    let addon_stack = pr.stacks.iter().find(|s| s.live_bytes == 4096).unwrap();
    assert_eq!(addon_stack.bucket, Some(Bucket::NativeAddon));
    assert_eq!(addon_stack.frames[0].symbol.as_deref(), Some("addon_leak"));
    assert_eq!(
        addon_stack.frames[0].module.as_deref(),
        Some(addon.to_str().unwrap())
    );
    assert_eq!(
        addon_stack.frames[1].symbol.as_deref(),
        Some("napi_create_function")
    );
}
