//! `--output` never destroys what the path names: a device stays a device, a
//! FIFO gets the report, a symlink stays a link to a replaced file, and a
//! directory is refused before tracing.
use std::{
    ffi::CString,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use offheap_e2e::*;

/// `offheap record --pid <a sleeper> --duration SECS --format json --output OUT`.
fn record_to(out: &Path, secs: &str) -> Output {
    let mut target = sleeper();
    let o = offheap(&[
        "record",
        "--pid",
        &target.id().to_string(),
        "--mode",
        "malloc",
        "--duration",
        secs,
        "--format",
        "json",
        "--output",
        out.to_str().unwrap(),
    ]);
    target.kill().unwrap();
    let _ = target.wait();
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mknod_null(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mknod(2) with a valid C string; makedev(1, 3) is /dev/null.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
}

#[test]
fn a_character_device_stays_a_device() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("x");
    mknod_null(&dev);
    let o = record_to(&dev, "1");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = std::fs::symlink_metadata(&dev).unwrap();
    assert!(m.file_type().is_char_device(), "{m:?}");
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    // Nothing else was created next to it (no temporary file left).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_fifo_with_a_reader_gets_the_report() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c = CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let o = record_to(&fifo, "1");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = reader.join().unwrap();
    let v = parse_report(&String::from_utf8(got).unwrap());
    assert_eq!(v["schema"], "offheap.report.v1");
    assert_eq!(v["processes"].as_array().unwrap().len(), 1);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn a_symlink_is_kept_and_its_file_replaced_atomically() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    std::fs::write(&real, "old").unwrap();
    let before = std::fs::metadata(&real).unwrap().ino();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink("real.json", &link).unwrap();
    let o = record_to(&link, "1");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real.json"));
    // A new inode: renamed over, not rewritten in place.
    assert_ne!(std::fs::metadata(&real).unwrap().ino(), before);
    assert_eq!(read_report(&real)["processes"][0]["exited"], false);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn dev_stdout_reaches_the_pipe_offheap_was_given() {
    let _lock = require_bpf();
    let o = record_to(Path::new("/dev/stdout"), "0.5");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = parse_report(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(v["schema"], "offheap.report.v1");
}

fn one_error_line(o: &Output) -> String {
    let s = stderr(o);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {s:?}");
    lines[0].to_string()
}

#[test]
fn a_directory_is_refused_before_tracing() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // 30 s of tracing if it were accepted.
    let o = record_to(dir.path(), "30");
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        one_error_line(&o),
        format!(
            "offheap: error: cannot write {}: it is a directory; give a file name",
            dir.path().display()
        )
    );
    // Refused up front: nothing attached, no trace ran.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_file_in_proc_is_refused_naming_that_file() {
    let _lock = require_bpf();
    let o = record_to(Path::new("/proc/version"), "30");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = one_error_line(&o);
    assert_eq!(
        line,
        "offheap: error: cannot write /proc/version: cannot create a temporary file in /proc: \
         No such file or directory (os error 2)"
    );
    assert!(!line.contains(".tmp."), "{line}");
}
