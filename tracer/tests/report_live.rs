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
        top.contains("+1.0 MiB/s") && top.contains("leak_chunk < Leak"),
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

/// A real pseudo-terminal (openpty(3)): the view sees a terminal through
/// isatty(3) on its output and draws screens; through a pipe it writes plain
/// lines.
#[test]
fn live_view_detects_a_pseudo_terminal_and_a_pipe() {
    use offheap::report::live::LiveView;
    use std::{
        fs::File,
        io::Read,
        os::fd::{FromRawFd, OwnedFd},
    };

    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the two ints.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned here only.
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    let (prev, now) = two_reports();
    let mut view = LiveView::new(slave);
    assert!(view.is_tty());
    view.draw(prev.clone()).unwrap();
    view.draw(now.clone()).unwrap();
    drop(view);
    let mut screen = Vec::new();
    let mut m = master;
    // The slave is closed: read until the pty reports EIO (no more writers).
    let mut buf = [0u8; 4096];
    loop {
        match m.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => screen.extend_from_slice(&buf[..n]),
        }
    }
    let screen = String::from_utf8_lossy(&screen);
    assert_eq!(screen.matches("\x1b[H\x1b[2J").count(), 2, "{screen:?}");
    assert!(
        screen.contains("growing fastest: native_addon +1.0 MiB/s"),
        "{screen}"
    );

    let (mut r, w) = {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new descriptors into fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors, owned here only.
        unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        }
    };
    let mut view = LiveView::new(w);
    assert!(!view.is_tty());
    view.draw(prev).unwrap();
    view.draw(now).unwrap();
    drop(view);
    let mut plain = String::new();
    r.read_to_string(&mut plain).unwrap();
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert_eq!(plain.matches("offheap · malloc mode").count(), 2, "{plain}");
    assert!(plain.contains("growing fastest: native_addon +1.0 MiB/s"));
}
