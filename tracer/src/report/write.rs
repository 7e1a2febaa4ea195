//! Writing outputs without ever leaving a half-written file, and without
//! destroying what the output path names.
//!
//! What `--output PATH` does, by what PATH is:
//! - missing, or a regular file: write a temporary file `.NAME.tmp.PID` in the
//!   same directory, fsync it, then rename(2) it over PATH, which POSIX makes
//!   atomic within one filesystem (the file keeps its permission bits);
//! - a symbolic link: the same rules apply to what it points to, so the link
//!   stays a link and its target is replaced (or created);
//! - a character device (`/dev/null`, a terminal) or a FIFO: written in
//!   place, as `cat > PATH` would: renaming over them would replace the device
//!   node or the pipe with a regular file;
//! - `/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`: links into /proc that
//!   name an open file (proc(5) "magic links"), written in place through the
//!   link, which reaches the pipe, terminal or file offheap was given;
//! - a directory, a socket or a block device: refused, before tracing (see
//!   `check_writable`).
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: cannot create a temporary file in {dir}")]
    TempFile {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: it is a directory; give a file name")]
    IsDirectory { path: PathBuf },
    #[error(
        "cannot write {path}: it is a {what}; give a regular file, a FIFO or a character device"
    )]
    Unsupported { path: PathBuf, what: &'static str },
}

/// Symbolic links followed before giving up (the kernel's limit, path_resolution(7)).
const MAX_SYMLINKS: usize = 40;

/// Where the bytes go, once the path is resolved.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// Temporary file + rename over this path (a regular file or nothing).
    Replace(PathBuf),
    /// Opened and written as is.
    InPlace(PathBuf),
}

/// A symlink in /proc is a magic link (`/proc/self/fd/1`, what `/dev/stdout`
/// points to): readlink(2) gives a description (`pipe:[123]`) rather than a
/// path to follow, so the link itself must be opened. Its directory is
/// resolved first: `/dev/fd/1` is `/proc/self/fd/1` through `/dev/fd`.
fn is_proc_link(p: &Path) -> bool {
    let dir = parent_dir(p);
    fs::canonicalize(&dir).is_ok_and(|d| d.starts_with("/proc"))
}

/// Resolves `path` by the rules at the top of this file. Errors carry
/// `user_path`, the path as the user gave it.
fn destination(user_path: &Path) -> Result<Destination, WriteError> {
    let io_err = |source| WriteError::Io {
        path: user_path.to_path_buf(),
        source,
    };
    let mut p = user_path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Destination::Replace(p)),
            Err(e) => return Err(io_err(e)),
        };
        let t = meta.file_type();
        if t.is_symlink() {
            if is_proc_link(&p) {
                return in_place_kind(user_path, p);
            }
            let target = fs::read_link(&p).map_err(io_err)?;
            p = match p.parent() {
                Some(dir) => dir.join(target),
                None => target,
            };
            continue;
        }
        return if t.is_file() {
            Ok(Destination::Replace(p))
        } else {
            in_place_kind(user_path, p)
        };
    }
    Err(io_err(io::Error::from_raw_os_error(libc::ELOOP)))
}

/// What to do with a path that is not a regular file: decided on what it
/// finally reaches (stat(2) follows the magic links of /proc).
fn in_place_kind(user_path: &Path, p: PathBuf) -> Result<Destination, WriteError> {
    let t = match fs::metadata(&p) {
        Ok(m) => m.file_type(),
        // A dangling /proc link (a closed fd): let the open say why.
        Err(_) => return Ok(Destination::InPlace(p)),
    };
    let refuse = |what| {
        Err(WriteError::Unsupported {
            path: user_path.to_path_buf(),
            what,
        })
    };
    if t.is_dir() {
        Err(WriteError::IsDirectory {
            path: user_path.to_path_buf(),
        })
    } else if t.is_socket() {
        refuse("socket")
    } else if t.is_block_device() {
        // A disk: never overwrite one with a report.
        refuse("block device")
    } else {
        // Character devices, FIFOs, and regular files reached through /proc.
        Ok(Destination::InPlace(p))
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(target: &Path) -> Option<PathBuf> {
    let name = target.file_name()?;
    Some(parent_dir(target).join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Writes `bytes` to `path` by the rules at the top of this file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_with(path, |w| w.write_all(bytes))
}

/// `write_atomic` of what `make` writes, as it writes it: a large output
/// (a diff of large reports) goes to the file without first being held in
/// memory whole.
pub fn write_with(
    path: &Path,
    make: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), WriteError> {
    let io_err = |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let target = match destination(path)? {
        Destination::InPlace(p) => {
            // O_TRUNC as a shell's `>` does; devices and FIFOs ignore it.
            let f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&p)
                .map_err(io_err)?;
            let mut w = BufWriter::new(f);
            return make(&mut w).and_then(|()| w.flush()).map_err(io_err);
        }
        Destination::Replace(p) => p,
    };
    let tmp = temp_path(&target).ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let f = File::create(&tmp).map_err(|source| WriteError::TempFile {
        path: path.to_path_buf(),
        dir: parent_dir(&target),
        source,
    })?;
    let result = (|| {
        // The file being replaced keeps its permission bits.
        if let Ok(old) = fs::metadata(&target) {
            f.set_permissions(fs::Permissions::from_mode(
                old.permissions().mode() & 0o7777,
            ))?;
        }
        let mut w = BufWriter::new(f);
        make(&mut w)?;
        let f = w.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Checks up front that `path` can be written by `write_atomic`, so that a
/// bad `--output` fails before tracing, not after: a directory, socket or
/// block device is refused; a regular or missing file needs a writable
/// directory; a device or FIFO must be writable.
pub fn check_writable(path: &Path) -> Result<(), WriteError> {
    match destination(path)? {
        Destination::Replace(target) => {
            let dir = parent_dir(&target);
            let probe = dir.join(format!(".offheap-probe.{}", std::process::id()));
            match File::create(&probe) {
                Ok(_) => {
                    let _ = fs::remove_file(&probe);
                    Ok(())
                }
                Err(source) => Err(WriteError::TempFile {
                    path: path.to_path_buf(),
                    dir,
                    source,
                }),
            }
        }
        // access(2), not an open: opening a FIFO, even with O_NONBLOCK, and
        // closing it again would hand its reader an end of file (fifo(7)).
        Destination::InPlace(p) => {
            rustix::fs::access(&p, rustix::fs::Access::WRITE_OK).map_err(|e| WriteError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::one_line;
    use std::os::unix::fs::symlink;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replaced_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.txt");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let p = Path::new("/proc/offheap-no-such-dir/r.json");
        assert!(write_atomic(p, b"x").is_err());
        assert!(check_writable(p).is_err());
    }

    #[test]
    fn symlinks_are_resolved_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        fs::write(&real, "old").unwrap();
        // A relative link, resolved against its own directory; and a chain.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        symlink("../real.json", sub.join("a")).unwrap();
        symlink("a", sub.join("b")).unwrap();
        let link = sub.join("b");
        assert_eq!(
            destination(&link).unwrap(),
            Destination::Replace(sub.join("../real.json"))
        );
        check_writable(&link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"new");
        // A dangling link creates its target.
        let dangling = dir.path().join("d");
        symlink("made.json", &dangling).unwrap();
        write_atomic(&dangling, b"x").unwrap();
        assert_eq!(fs::read(dir.path().join("made.json")).unwrap(), b"x");
        // A loop is an error, not a hang.
        symlink("loop2", dir.path().join("loop1")).unwrap();
        symlink("loop1", dir.path().join("loop2")).unwrap();
        let e = one_line(&check_writable(&dir.path().join("loop1")).unwrap_err());
        assert!(e.contains("symbolic links"), "{e}");
    }

    #[test]
    fn devices_and_fifos_are_written_in_place() {
        assert_eq!(
            destination(Path::new("/dev/null")).unwrap(),
            Destination::InPlace("/dev/null".into())
        );
        check_writable(Path::new("/dev/null")).unwrap();
        write_atomic(Path::new("/dev/null"), b"x").unwrap();
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        // /dev/stdout -> /proc/self/fd/1: the link into /proc is opened;
        // /dev/fd/1 is that same link, reached through the /dev/fd symlink.
        assert_eq!(
            destination(Path::new("/dev/stdout")).unwrap(),
            Destination::InPlace("/proc/self/fd/1".into())
        );
        assert_eq!(
            destination(Path::new("/dev/fd/1")).unwrap(),
            Destination::InPlace("/dev/fd/1".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No reader yet: still writable up front.
        check_writable(&fifo).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn directories_are_refused_naming_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("to-dir");
        symlink(dir.path(), &link).unwrap();
        for p in [dir.path(), link.as_path()] {
            let e = check_writable(p).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "cannot write {}: it is a directory; give a file name",
                    p.display()
                )
            );
            assert!(write_atomic(p, b"x").is_err());
        }
    }

    #[test]
    fn a_file_in_proc_names_the_given_path() {
        // open(2) with O_CREAT in /proc fails with ENOENT, even for root.
        let want = "cannot write /proc/version: cannot create a temporary file in /proc: \
                    No such file or directory (os error 2)";
        let e = check_writable(Path::new("/proc/version")).unwrap_err();
        assert_eq!(one_line(&e), want);
        let e = write_atomic(Path::new("/proc/version"), b"x").unwrap_err();
        assert_eq!(one_line(&e), want);
    }
}
