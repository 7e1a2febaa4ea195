//! The text view of stacks through the real `offheap report`: stacks whose
//! frames mean the same are one (bytes added up), each opens with its
//! headline, and runs of runtime frames fold into one line that
//! `--frames all` opens again. The report is fixtures/after.json with its
//! Buffer stack seen three times, as a long-running process shows it: at
//! other addresses, and once with its JS functions at another V8 tier.
mod report_support;

use offheap::report::{json, Frame, FrameKind, Report};
use report_support::{load, offheap_ok};

const AB: u64 = 2_621_440;

/// V8's entry trampolines between the JS frames and uv_run, as node's
/// stacks have them.
fn builtins() -> Vec<Frame> {
    [
        "Builtins_JSEntryTrampoline",
        "Builtins_JSEntry",
        "v8::internal::(anonymous namespace)::Invoke(v8::internal::Isolate*, v8::internal::(anonymous namespace)::InvokeParams const&)",
        "v8::internal::Execution::Call(v8::internal::Isolate*, v8::internal::Handle<v8::internal::Object>, v8::internal::Handle<v8::internal::Object>, int, v8::internal::Handle<v8::internal::Object>*)",
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| Frame {
        addr: format!("{:#x}", 0x1c00000 + i * 16),
        symbol: Some(s.to_string()),
        module: Some("/usr/bin/node".into()),
        ..Frame::default()
    })
    .collect()
}

fn report_with_repeated_stacks() -> Report {
    let mut r = load("after.json");
    let p = &mut r.processes[0];
    let i = p
        .stacks
        .iter()
        .position(|s| s.bucket.map(|b| b.as_str()) == Some("array_buffers"))
        .unwrap();
    // Trampolines before uv_run (the frames are innermost first).
    let at = p.stacks[i]
        .frames
        .iter()
        .position(|f| f.symbol.as_deref() == Some("uv_run"))
        .unwrap();
    p.stacks[i].frames.splice(at..at, builtins());
    let mut again = p.stacks[i].clone();
    for f in &mut again.frames {
        f.addr = format!(
            "0x{:x}",
            u64::from_str_radix(&f.addr[2..], 16).unwrap() + 0x40
        );
    }
    let mut tier = again.clone();
    for f in tier.frames.iter_mut().filter(|f| f.kind == FrameKind::Js) {
        let s = f.symbol.take().unwrap();
        f.symbol = Some(s.replacen("JS:*", "JS:~", 1));
    }
    p.stacks.push(again);
    p.stacks.push(tier);
    p.buckets.array_buffers = 3 * AB;
    r
}

fn text(r: &Report, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    std::fs::write(&file, json::render(r).unwrap()).unwrap();
    let mut args = vec!["report", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    String::from_utf8(offheap_ok(&args)).unwrap()
}

#[test]
fn stacks_with_the_same_frames_are_one_with_a_headline() {
    let t = text(&report_with_repeated_stacks(), &[]);
    assert!(
        t.contains("\n  array_buffers · 7.5 MiB in 1 stacks\n"),
        "the three copies are one stack: {t}"
    );
    assert!(
        t.contains("\n    7.5 MiB array_buffers · readBody\n"),
        "headline: bytes, bucket, culprit frame: {t}"
    );
    assert!(t.contains(", 3 stacks with these frames merged\n"), "{t}");
    // Other buckets keep their one stack each.
    assert!(
        t.contains("\n  native_addon · 5.0 MiB in 1 stacks\n"),
        "{t}"
    );
}

#[test]
fn runtime_frames_fold_and_frames_all_shows_them() {
    let r = report_with_repeated_stacks();
    let folded = text(&r, &[]);
    // The trampolines, uv_run and node::Start: one run.
    assert!(
        folded.contains("        … 6 V8/libuv/node start-up frames …\n"),
        "{folded}"
    );
    assert!(!folded.contains("Builtins_JSEntryTrampoline"), "{folded}");
    let all = text(&r, &["--frames", "all"]);
    assert!(!all.contains(" V8 frames …"), "{all}");
    for f in builtins() {
        let name = f.symbol.unwrap();
        assert!(
            all.contains(&format!("        {name} [node]\n")),
            "{name} in {all}"
        );
    }
    // JSON keeps every frame whatever the text shows.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    std::fs::write(&file, json::render(&r).unwrap()).unwrap();
    let back = json::parse(&offheap_ok(&[
        "report",
        file.to_str().unwrap(),
        "--format",
        "json",
        "--frames",
        "folded",
    ]))
    .unwrap();
    let frames: usize = back.processes[0]
        .stacks
        .iter()
        .map(|s| s.frames.len())
        .sum();
    let want: usize = r.processes[0].stacks.iter().map(|s| s.frames.len()).sum();
    assert_eq!(frames, want);
}
