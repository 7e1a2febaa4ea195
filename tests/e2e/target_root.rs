//! Files of a target are read inside its root: a process in its own mount
//! namespace (pivoted into a directory, as a container runtime does) whose
//! libc path is replaced by a symlink to a host file after it mapped libc.
//! A path walk through /proc/PID/root would resolve that absolute symlink
//! from offheap's root, onto the host file (path_resolution(7)): its
//! symbols would be read and the uprobes placed in the host file's inode.
//! offheap must trace the libc the process really maps, exactly, and never
//! open the host file.
use std::{
    ffi::CString,
    os::unix::{fs::symlink, process::CommandExt},
    path::Path,
    process::Command,
    time::Duration,
};

use offheap_e2e::*;

const T: Duration = Duration::from_secs(120);

/// Copies `from` to `root`/`to`, creating its directories.
fn install(from: &Path, root: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

/// The file the fixture's dynamic linker loads `lib` from on this host.
fn host_lib(lib: &str) -> std::path::PathBuf {
    std::fs::canonicalize(Path::new("/lib/x86_64-linux-gnu").join(lib)).unwrap()
}

/// Watches `path` for opens and reads (inotify(7)); the fd stays open.
fn watch_opens(path: &Path) -> i32 {
    // SAFETY: plain syscalls on a path we own; the fd is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(
        fd >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
    assert!(
        wd >= 0,
        "inotify_add_watch: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Bytes of inotify events queued on `fd` (0: none).
fn queued_events(fd: i32) -> isize {
    let mut buf = [0u8; 4096];
    // SAFETY: read(2) into our buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
        return 0;
    }
    n
}

#[test]
fn a_libc_symlinked_to_a_host_file_is_never_followed() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bin = build_fixture("in_root", dir.path());
    let sizes = symbol_sizes(&bin);
    install(&bin, &root, "/app");
    install(
        &host_lib("libc.so.6"),
        &root,
        "/lib/x86_64-linux-gnu/libc.so.6",
    );
    install(
        &host_lib("ld-linux-x86-64.so.2"),
        &root,
        "/lib64/ld-linux-x86-64.so.2",
    );
    // The trap: a host file outside the root, a libc too (so following the
    // link would go unnoticed but for the bytes: its inode is not the one
    // the process maps, and a uprobe placed there never fires).
    let trap = dir.path().join("host-only/libc.so.6");
    std::fs::create_dir_all(trap.parent().unwrap()).unwrap();
    std::fs::copy(host_lib("libc.so.6"), &trap).unwrap();

    let root_c = CString::new(root.to_str().unwrap()).unwrap();
    let mut cmd = Command::new("/app");
    // SAFETY: only async-signal-safe syscalls between fork and exec. A new
    // mount namespace, the root directory bind-mounted on itself (pivot_root
    // needs a mount point), pivot_root(".", ".") with the old root lazily
    // unmounted (pivot_root(2)): the process sees only the directory, and the
    // host reads its maps with paths inside it, as for a container.
    unsafe {
        cmd.pre_exec(move || {
            let dot = c".".as_ptr();
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    root_c.as_ptr(),
                    root_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                || libc::chdir(root_c.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, dot, dot) != 0
                || libc::umount2(dot, libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
    let (mut fixture, lines, before) = start_fixture(&mut cmd, T);
    let sites = parse_sites(&before);
    let pid = fixture.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.lines()
            .any(|l| l.ends_with(" /lib/x86_64-linux-gnu/libc.so.6")),
        "libc is not mapped by its in-root path: {maps}"
    );

    // The process (a container) replaces the libc it mapped by a symlink to
    // a host path: the mapping now reads "(deleted)", the path leads out.
    let planted = root.join("lib/x86_64-linux-gnu/libc.so.6");
    std::fs::remove_file(&planted).unwrap();
    symlink(&trap, &planted).unwrap();
    let inotify = watch_opens(&trap);

    let out = dir.path().join("r.json");
    let mut record = Command::new(offheap_bin());
    record
        .args(["record", "--pid", &pid.to_string(), "--mode", "malloc"])
        .args(["--format", "json", "--output", out.to_str().unwrap()]);
    let (mut tracer, _, err) = spawn_attached(&mut record, T);
    let mut stdin = fixture.stdin.take().unwrap();
    poke(&mut stdin);
    lines.until("done", T);
    stop_record(&mut tracer, err);
    drop(stdin);
    let _ = fixture.wait();

    assert_eq!(queued_events(inotify), 0, "offheap opened the host file");
    // SAFETY: closing our inotify fd.
    unsafe { libc::close(inotify) };
    let report = read_report(&out);
    assert_eq!(report["processes"][0]["pid"], pid);
    assert_site_totals(
        &report,
        &sites,
        &sizes,
        &[
            ("site_kept", 12963, 3, 12963, 3),
            ("site_freed", 0, 0, 1234, 1),
        ],
    );
    // No frame of the report names a host path.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("host-only"), "a host path in the report");
}
