//! The layout of every struct in `tracer-ebpf/include/offheap.h` must equal its
//! Rust mirror: compile a C program that includes the header with the host
//! `cc`, print each sizeof/offsetof, and compare with size_of/offset_of!.
use std::{collections::BTreeMap, mem::offset_of, mem::size_of, path::PathBuf, process::Command};

use tracer_common::*;

/// (C expression, Rust value) for every size and offset the BPF side relies on.
macro_rules! layout {
    ($($cty:literal $rty:ty { $($f:ident),* })*) => {{
        let mut v: Vec<(String, usize)> = Vec::new();
        $(
            v.push((format!("sizeof(struct {})", $cty), size_of::<$rty>()));
            $( v.push((format!("offsetof(struct {}, {})", $cty, stringify!($f)), offset_of!($rty, $f))); )*
        )*
        v
    }};
}

fn rust_layout() -> Vec<(String, usize)> {
    let mut v = layout! {
        "target_info" TargetInfo { flags, _pad }
        "traffic_counts" TrafficCounts { accepted, received_bytes }
        "stack_key" StackKey { tgid, stack_id, async_stack }
        "stack_ips" StackIps { nr, flags, hash, ips }
        "stack_stats" StackStats { live_bytes, live_allocs, total_bytes, total_allocs, sizes, lifetimes }
        "inline_hist" InlineHist { bucket, count }
        "alloc_key" AllocKey { tgid, _pad, addr }
        "alloc_info" AllocInfo { size, ts_ns, stack }
        "inflight" Inflight { size, old_ptr, out_ptr, kind, depth, stack, sp, fn_start, fn_end, deleting }
        "event_header" EventHeader { kind, tgid, ts_ns }
        "vm_event" VmEvent { hdr, addr, len, old_addr, old_len, flags, prot, stack }
        "proc_event" ProcEvent { hdr, child_tgid, exit_code, comm }
        "oom_event" OomEvent { hdr, total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb, pgtables_kb, uid, oom_score_adj, _pad, comm }
        "vm_args" VmArgs { addr, len, old_len, flags, prot, syscall, _pad, stack }
        "fault_event" FaultEvent { hdr, address, ip, error_code, stack_id, sp_word, async_stack, _pad }
        "fault_page_key" FaultPageKey { tgid, _pad, page }
        "fault_skip_range" FaultSkipRange { lo, hi, touched }
        "fault_config" FaultConfig { sample_every, _pad }
        "hist_key" HistKey { stack, bucket }
        "work_key" WorkKey { tgid, _pad, work }
        "v8_proc_config" V8ProcConfig { builtins_start, builtins_end, remap_start, remap_end, interp_lo, interp_hi, handlers_lo, _pad, fp_context, fp_function, fp_bytecode_array, fp_bytecode_offset, off_map, off_instance_type, off_shared, bytecode_offset_bias, type_js_function_first, type_js_function_last, type_shared_function_info, type_bytecode_array, bytecode_array_map, js_function_maps }
        "unwind_mapping_key" UnwindMappingKey { prefixlen, tgid_be, addr_be }
        "unwind_mapping" UnwindMapping { start, end, bias, module, npages, kind, _pad }
        "unwind_row" UnwindRow { pc, kind, rbp, cfa }
        "unwind_page" UnwindPage { first, count }
    };
    v.push((
        "sizeof(union unwind_entry)".into(),
        size_of::<UnwindEntry>(),
    ));
    // MapEvent mirrors the fixed part of struct map_event; stack[] follows it.
    v.push((
        "offsetof(struct map_event, stack)".into(),
        size_of::<MapEvent>(),
    ));
    v.extend(layout! {
        "map_event" MapEvent { hdr, addr, len, old_addr, old_len, flags, prot, syscall, stack_len, ip, sp, bp, stack_base, async_stack, stack_id }
    }
    .into_iter()
    .filter(|(e, _)| !e.starts_with("sizeof")));
    v
}

/// Constants that must agree too (C expression, Rust value).
fn rust_constants() -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = vec![
        ("OFFHEAP_MAX_TARGETS".into(), MAX_TARGETS.into()),
        ("OFFHEAP_MAX_ALLOCS".into(), MAX_ALLOCS.into()),
        ("OFFHEAP_MAX_STACK_STATS".into(), MAX_STACK_STATS.into()),
        ("OFFHEAP_MAX_INFLIGHT".into(), MAX_INFLIGHT.into()),
        ("OFFHEAP_MAX_STACK_DEPTH".into(), MAX_STACK_DEPTH as u64),
        ("OFFHEAP_EVENTS_BYTES".into(), EVENTS_BYTES.into()),
        ("OFFHEAP_COMM_LEN".into(), COMM_LEN as u64),
        ("OFFHEAP_MAX_HASHED_STACKS".into(), MAX_HASHED_STACKS.into()),
        ("OFFHEAP_STACK_WINDOW".into(), STACK_WINDOW as u64),
        ("OFFHEAP_INLINE_BUCKETS".into(), INLINE_BUCKETS as u64),
        ("OFFHEAP_STACK_HASH_PROBES".into(), STACK_HASH_PROBES.into()),
        ("OFFHEAP_STACK_ID_BITS".into(), STACK_ID_BITS.into()),
        ("OFFHEAP_STACK_TRUNCATED".into(), STACK_TRUNCATED.into()),
        ("OFFHEAP_TARGET_MALLOC".into(), TARGET_MALLOC.into()),
        ("OFFHEAP_TARGET_VM".into(), TARGET_VM.into()),
        ("OFFHEAP_TARGET_FAULTS".into(), TARGET_FAULTS.into()),
        ("OFFHEAP_TARGET_FOLLOW".into(), TARGET_FOLLOW.into()),
        ("OFFHEAP_CTR_MAX".into(), COUNTER_MAX.into()),
        ("OFFHEAP_MAX_HIST".into(), MAX_HIST.into()),
        ("OFFHEAP_HIST_SUB_BITS".into(), HIST_SUB_BITS.into()),
        ("OFFHEAP_HIST_BUCKETS".into(), HIST_BUCKETS.into()),
        ("OFFHEAP_EV_MMAP".into(), event_kind::MMAP.into()),
        ("OFFHEAP_EV_MUNMAP".into(), event_kind::MUNMAP.into()),
        ("OFFHEAP_EV_MREMAP".into(), event_kind::MREMAP.into()),
        ("OFFHEAP_EV_BRK".into(), event_kind::BRK.into()),
        ("OFFHEAP_EV_MADVISE".into(), event_kind::MADVISE.into()),
        ("OFFHEAP_EV_EXEC_MAP".into(), event_kind::EXEC_MAP.into()),
        ("OFFHEAP_EV_EXEC".into(), event_kind::EXEC.into()),
        ("OFFHEAP_EV_EXIT".into(), event_kind::EXIT.into()),
        (
            "OFFHEAP_EV_OOM_VICTIM".into(),
            event_kind::OOM_VICTIM.into(),
        ),
        ("OFFHEAP_EV_FORK".into(), event_kind::FORK.into()),
        ("OFFHEAP_KIND_MALLOC".into(), AllocKind::Malloc as u64),
        ("OFFHEAP_KIND_FREE".into(), AllocKind::Free as u64),
        ("OFFHEAP_KIND_PVALLOC".into(), AllocKind::Pvalloc as u64),
        ("OFFHEAP_KIND_NEW".into(), AllocKind::New as u64),
        (
            "OFFHEAP_KIND_NEW_NOTHROW".into(),
            AllocKind::NewNothrow as u64,
        ),
        ("OFFHEAP_KIND_DELETE".into(), AllocKind::Delete as u64),
        ("OFFHEAP_TP_QUEUE".into(), threadpool_kind::QUEUE.into()),
        ("OFFHEAP_TP_RUN".into(), threadpool_kind::RUN.into()),
        ("OFFHEAP_TP_DONE".into(), threadpool_kind::DONE.into()),
        (
            "OFFHEAP_COOKIE_THREADPOOL".into(),
            programs::COOKIE_THREADPOOL,
        ),
        ("OFFHEAP_UV_WORK_REQ_OFFSET".into(), UV_WORK_REQ_OFFSET),
        ("OFFHEAP_MAX_QUEUED_WORK".into(), MAX_QUEUED_WORK.into()),
        (
            "OFFHEAP_FAULT_EVENTS_BYTES".into(),
            FAULT_EVENTS_BYTES.into(),
        ),
        ("OFFHEAP_MAX_FAULT_PAGES".into(), MAX_FAULT_PAGES.into()),
        ("OFFHEAP_GRANULE_SHIFT".into(), GRANULE_SHIFT.into()),
        ("OFFHEAP_GRANULE_PAGES".into(), GRANULE_PAGES as u64),
        ("OFFHEAP_STACK_COPY_PAGES".into(), STACK_COPY_PAGES as u64),
        ("OFFHEAP_STACK_COPY_BYTES".into(), STACK_COPY_BYTES as u64),
        ("OFFHEAP_EV_FAULT".into(), resident_event_kind::FAULT.into()),
        (
            "OFFHEAP_EV_MAP_STACK".into(),
            resident_event_kind::MAP_STACK.into(),
        ),
        (
            "OFFHEAP_EV_FAULT_STACK".into(),
            resident_event_kind::FAULT_STACK.into(),
        ),
    ];
    v.extend([
        ("OFFHEAP_V8_FRAME_BYTES".into(), V8_FRAME_BYTES.into()),
        (
            "OFFHEAP_V8_JS_FUNCTION_BYTES".into(),
            V8_JS_FUNCTION_BYTES.into(),
        ),
        ("OFFHEAP_V8_FRAME_TAG".into(), V8_FRAME_TAG),
        ("OFFHEAP_V8_TIER_SHIFT".into(), V8_TIER_SHIFT.into()),
        ("OFFHEAP_V8_TIER_MASK".into(), V8_TIER_MASK),
        ("OFFHEAP_V8_OFFSET_SHIFT".into(), V8_OFFSET_SHIFT.into()),
        ("OFFHEAP_V8_OFFSET_MAX".into(), V8_OFFSET_MAX),
        ("OFFHEAP_V8_SFI_MASK".into(), V8_SFI_MASK),
        ("OFFHEAP_V8_TIER_INTERPRETED".into(), v8_tier::INTERPRETED),
        ("OFFHEAP_V8_TIER_BASELINE".into(), v8_tier::BASELINE),
        ("OFFHEAP_V8_TIER_OPTIMIZED".into(), v8_tier::OPTIMIZED),
    ]);
    v.extend([
        (
            "OFFHEAP_MAX_UNWIND_MAPPINGS".into(),
            MAX_UNWIND_MAPPINGS.into(),
        ),
        (
            "OFFHEAP_MAX_UNWIND_MODULES".into(),
            MAX_UNWIND_MODULES.into(),
        ),
        ("OFFHEAP_UNWIND_PAGE_SHIFT".into(), UNWIND_PAGE_SHIFT.into()),
        (
            "OFFHEAP_UNWIND_SEARCH_STEPS".into(),
            UNWIND_SEARCH_STEPS.into(),
        ),
        ("OFFHEAP_UNWIND_UC_RBP".into(), UNWIND_UC_RBP as u64),
        ("OFFHEAP_UNWIND_UC_RSP".into(), UNWIND_UC_RSP as u64),
        ("OFFHEAP_UNWIND_UC_RIP".into(), UNWIND_UC_RIP as u64),
        ("OFFHEAP_UNWIND_MAP_FP".into(), unwind_map_kind::FP.into()),
        (
            "OFFHEAP_UNWIND_MAP_TABLE".into(),
            unwind_map_kind::TABLE.into(),
        ),
        ("OFFHEAP_UNWIND_MAP_JIT".into(), unwind_map_kind::JIT.into()),
        (
            "OFFHEAP_UNWIND_MAP_NONE".into(),
            unwind_map_kind::NONE.into(),
        ),
    ]);
    let row_kinds = [
        ("FP", unwind_row_kind::FP),
        ("RSP", unwind_row_kind::RSP),
        ("RBP", unwind_row_kind::RBP),
        ("PLT", unwind_row_kind::PLT),
        ("DEREF_RSP", unwind_row_kind::DEREF_RSP),
        ("DRAP", unwind_row_kind::DRAP),
        ("SIGNAL", unwind_row_kind::SIGNAL),
        ("END", unwind_row_kind::END),
        ("STOP", unwind_row_kind::STOP),
    ];
    for (name, k) in row_kinds {
        v.push((format!("OFFHEAP_UNWIND_ROW_{name}"), k.into()));
    }
    let c_names = [
        "OFFHEAP_CTR_ALLOCS_FULL",
        "OFFHEAP_CTR_STACK_STATS_FULL",
        "OFFHEAP_CTR_STACK_ID_FAILED",
        "OFFHEAP_CTR_INFLIGHT_FULL",
        "OFFHEAP_CTR_EVENTS_LOST",
        "OFFHEAP_CTR_FREE_UNKNOWN",
        "OFFHEAP_CTR_READ_FAILED",
        "OFFHEAP_CTR_FAULT_STATS_FULL",
        "OFFHEAP_CTR_OOM_KILLS",
        "OFFHEAP_CTR_HIST_FULL",
        "OFFHEAP_CTR_TARGETS_FULL",
        "OFFHEAP_CTR_NEW_UNFINISHED",
    ];
    for (c, name) in Counter::ALL.iter().zip(c_names) {
        v.push((name.into(), *c as u64));
    }
    v
}

fn c_values(tag: &str, exprs: &[String]) -> BTreeMap<String, u64> {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tracer-ebpf/include");
    let dir = tempfile_dir(tag);
    let src = dir.join("layout.c");
    let bin = dir.join("layout");
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"offheap.h\"\nint main(void) {\n",
    );
    for e in exprs {
        c.push_str(&format!(
            "    printf(\"%s=%llu\\n\", \"{e}\", (unsigned long long)({e}));\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    std::fs::write(&src, c).unwrap();
    let out = Command::new("cc")
        .arg(format!("-I{}", include.display()))
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("running cc (install a C compiler)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn tempfile_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("offheap-abi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn struct_layouts_match_the_c_header() {
    let rust = rust_layout();
    let exprs: Vec<String> = rust.iter().map(|(e, _)| e.clone()).collect();
    let c = c_values("structs", &exprs);
    let mismatches: Vec<String> = rust
        .iter()
        .filter(|(e, v)| c[e] != *v as u64)
        .map(|(e, v)| format!("{e}: C {} != Rust {v}", c[e]))
        .collect();
    assert!(
        mismatches.is_empty(),
        "ABI drift:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn constants_match_the_c_header() {
    let rust = rust_constants();
    let exprs: Vec<String> = rust.iter().map(|(e, _)| e.clone()).collect();
    let c = c_values("consts", &exprs);
    let mismatches: Vec<String> = rust
        .iter()
        .filter(|(e, v)| c[e] != *v)
        .map(|(e, v)| format!("{e}: C {} != Rust {v}", c[e]))
        .collect();
    assert!(
        mismatches.is_empty(),
        "ABI drift:\n{}",
        mismatches.join("\n")
    );
}

/// The Rust bucket function is the BPF one (same formula, checked at the
/// edges), and the lower bound inverts it.
#[test]
fn hist_buckets_round_trip() {
    assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    let mut values: Vec<u64> = (0..4096).collect();
    for e in 0..64 {
        let p = 1u64 << e;
        values.extend([p, p - 1, p + 1, p + p / 3]);
    }
    values.push(u64::MAX);
    for v in values {
        let b = hist_bucket(v);
        let lo = hist_lower_bound(b);
        assert!(lo <= v, "{v}: bucket {b} starts at {lo}");
        assert_eq!(hist_bucket(lo), b, "{v}");
        if b + 1 < HIST_BUCKETS {
            assert!(hist_lower_bound(b + 1) > v, "{v}: bucket {b}");
        }
        // Within 1/8 of the value (exact below 16 and for powers of two).
        assert!(v - lo <= v / 8, "{v}: {lo}");
        if v.is_power_of_two() || v < 16 {
            assert_eq!(lo, v);
        }
    }
}
