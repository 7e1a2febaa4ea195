//! The live view drawn from two successive reports of one process whose addon
//! leaks 1 MiB per second (built from fixtures/after.json).
mod report_support;

use offheap::report::{live::render_live, Report};
use report_support::load;

fn two_reports() -> (Report, Report) {
    let now = load("after.json");
    let mut prev = now.clone();
    prev.duration_secs -= 2.0;
    let p = &mut prev.processes[0];
    p.buckets.native_addon -= 2 << 20;
    p.rss_bytes -= 2 << 20;
    p.stacks
        .iter_mut()
        .find(|s| {
            s.frames
                .iter()
                .any(|f| f.symbol.as_deref() == Some("leak_chunk"))
        })
        .unwrap()
        .live_bytes -= 2 << 20;
    (prev, now)
}

#[test]
fn terminal_screen_shows_the_growing_bucket() {
    let (prev, now) = two_reports();
    let s = render_live(&now, Some(&prev), true);
    assert!(s.starts_with("\x1b[H\x1b[2J"), "{s:?}");
    assert!(
        s.contains("growing fastest: native_addon +1.0 MiB/s"),
        "{s}"
    );
    assert!(s.contains("RSS 73.0 MiB (+1.0 MiB/s)"), "{s}");
    // The leaking stack tops the stacks by growth.
    let top = s
        .lines()
        .skip_while(|l| !l.contains("top stacks by growth"))
        .nth(1)
        .unwrap();
    assert!(
        top.contains("+1.0 MiB/s") && top.contains("malloc < leak_chunk < Leak"),
        "{top}"
    );
}

#[test]
fn plain_output_has_no_escape_codes() {
    let (prev, now) = two_reports();
    for s in [
        render_live(&now, Some(&prev), false),
        render_live(&now, None, false),
    ] {
        assert!(!s.bytes().any(|b| b == 0x1b), "{s:?}");
        assert!(s.contains("native_addon"));
    }
}
