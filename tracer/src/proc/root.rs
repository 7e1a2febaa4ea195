//! Opening a file of a traced process inside that process's root directory,
//! never outside it. offheap runs as root and reads files the target can
//! write (its perf map, a container's debug files); a path or symlink planted
//! by the target must not make offheap read a host file such as /etc/shadow
//! into a report.
//!
//! Every such open goes through [`Root::open`]:
//! - openat2(2) from an O_PATH descriptor of `/proc/PID/root` with
//!   RESOLVE_IN_ROOT (`..` and absolute symlinks stay inside that directory,
//!   as if the process had chroot'ed there) and RESOLVE_NO_MAGICLINKS (no
//!   `/proc/*/fd/N`-style jump out of it). Linux 5.6+.
//! - On a kernel without openat2 (ENOSYS), a walk that opens every component
//!   with O_NOFOLLOW and refuses `..`: any symlink on the way is refused.
//! - The file must be a regular file (fstat after the open): a FIFO or a
//!   device would block or never end a read. O_NONBLOCK makes the open of a
//!   FIFO itself return at once (fifo(7)).
//!
//! Modules are also opened through `/proc/PID/map_files/…`, which is a magic
//! link on purpose (the exact inode mapped); that path is not for this module.
use std::{
    fs::File,
    io,
    os::fd::OwnedFd,
    path::{Component, Path, PathBuf},
};

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};

#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    #[error("cannot open the root directory {root}")]
    Root {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path} inside {root}")]
    Open {
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} inside {root} is not a regular file")]
    NotRegular { root: PathBuf, path: PathBuf },
}

impl InRootError {
    /// True when the file simply is not there (not worth a warning).
    pub fn is_not_found(&self) -> bool {
        matches!(self, InRootError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A directory that paths are resolved in, as if it were `/`.
pub struct Root {
    dir: OwnedFd,
    /// For messages: `/proc/PID/root`, or `/`.
    path: PathBuf,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Root({})", self.path.display())
    }
}

impl Root {
    /// The root directory of process `pid` (its mount namespace's view, a
    /// container's filesystem). The descriptor stays valid after the process
    /// exits, as long as that filesystem is mounted somewhere.
    pub fn of_process(pid: u32) -> Result<Root, InRootError> {
        Root::at(Path::new(&format!("/proc/{pid}/root")))
    }

    /// This host's own root.
    pub fn host() -> Result<Root, InRootError> {
        Root::at(Path::new("/"))
    }

    /// Any directory taken as a root (tests, or a root found another way).
    pub fn at(dir: &Path) -> Result<Root, InRootError> {
        // O_PATH: the descriptor only anchors lookups (open(2)); following
        // /proc/PID/root here is the one magic link we mean to follow.
        rfs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(|dir_fd| Root {
            dir: dir_fd,
            path: dir.to_path_buf(),
        })
        .map_err(|e| InRootError::Root {
            root: dir.to_path_buf(),
            source: e.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` (absolute as the process sees it, or relative to its
    /// root) read-only, resolved inside this root; only a regular file.
    pub fn open(&self, path: &Path) -> Result<File, InRootError> {
        let err = |source: io::Error| InRootError::Open {
            root: self.path.clone(),
            path: path.to_path_buf(),
            source,
        };
        let rel = path.strip_prefix("/").unwrap_or(path);
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = match rfs::openat2(
            &self.dir,
            rel,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOSYS) => self.open_nofollow(rel, flags).map_err(err)?,
            Err(e) => return Err(err(e.into())),
        };
        let file = File::from(fd);
        let regular = file.metadata().map_err(err)?.file_type().is_file();
        if !regular {
            return Err(InRootError::NotRegular {
                root: self.path.clone(),
                path: path.to_path_buf(),
            });
        }
        Ok(file)
    }

    /// The fallback without openat2: one component at a time, each opened
    /// with O_NOFOLLOW (a symlink fails with ELOOP), `..` refused.
    fn open_nofollow(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let parts: Vec<&std::ffi::OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(Ok(s)),
                Component::CurDir | Component::RootDir => None,
                Component::ParentDir | Component::Prefix(_) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a path with `..` is not followed",
                ))),
            })
            .collect::<io::Result<_>>()?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        };
        let mut cur: Option<OwnedFd> = None;
        for d in dirs {
            let next = rfs::openat(
                cur.as_ref().unwrap_or(&self.dir),
                *d,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            cur = Some(next);
        }
        Ok(rfs::openat(
            cur.as_ref().unwrap_or(&self.dir),
            *last,
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Read, os::unix::fs::symlink};

    fn read(f: File) -> String {
        let mut s = String::new();
        let mut f = f;
        f.read_to_string(&mut s).unwrap();
        s
    }

    /// A fake container root: `<root>/etc/secret` is the container's own
    /// file; the host has its own `<host>/secret`.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("etc/secret"), "container's own").unwrap();
        let host = t.path().join("host-secret");
        std::fs::write(&host, "HOST SECRET").unwrap();
        (t, root, host)
    }

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside_the_root() {
        let (_t, root, host) = fixture();
        // Absolute: means /etc/secret of the container, not the host's path.
        symlink("/etc/secret", root.join("tmp/abs")).unwrap();
        // Climbing out with .. stops at the root.
        symlink("../../../../../../etc/secret", root.join("tmp/up")).unwrap();
        // The host file by its absolute host path: resolved inside, so missing.
        symlink(&host, root.join("tmp/host")).unwrap();
        let r = Root::at(&root).unwrap();
        assert_eq!(
            read(r.open(Path::new("/tmp/abs")).unwrap()),
            "container's own"
        );
        assert_eq!(
            read(r.open(Path::new("/tmp/up")).unwrap()),
            "container's own"
        );
        let e = r.open(Path::new("/tmp/host")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = r.open(Path::new("/../../host-secret")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn magic_links_are_refused() {
        let (_t, root, host) = fixture();
        let f = File::open(&host).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        symlink(format!("/proc/self/fd/{fd}"), root.join("tmp/magic")).unwrap();
        // Through the host root, where /proc exists: the magic link is refused.
        let r = Root::host().unwrap();
        let e = r.open(&root.join("tmp/magic")).unwrap_err();
        let InRootError::Open { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "{e}");
    }

    #[test]
    fn only_regular_files() {
        let (_t, root, _) = fixture();
        let r = Root::at(&root).unwrap();
        assert!(matches!(
            r.open(Path::new("/etc")).unwrap_err(),
            InRootError::NotRegular { .. }
        ));
        let fifo = std::ffi::CString::new(root.join("tmp/fifo").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        // Returns at once (O_NONBLOCK), refused as not a regular file.
        assert!(matches!(
            r.open(Path::new("/tmp/fifo")).unwrap_err(),
            InRootError::NotRegular { .. }
        ));
        let h = Root::host().unwrap();
        assert!(matches!(
            h.open(Path::new("/dev/zero")).unwrap_err(),
            InRootError::NotRegular { .. }
        ));
    }

    #[test]
    fn fallback_walk_refuses_every_symlink_and_dotdot() {
        let (_t, root, _) = fixture();
        symlink("/etc/secret", root.join("tmp/abs")).unwrap();
        symlink("etc", root.join("etc-link")).unwrap();
        let r = Root::at(&root).unwrap();
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        let ok = r.open_nofollow(Path::new("etc/secret"), flags).unwrap();
        assert_eq!(read(File::from(ok)), "container's own");
        for p in ["tmp/abs", "etc-link/secret"] {
            let e = r.open_nofollow(Path::new(p), flags).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
                "{p}: {e}"
            );
        }
        assert!(r
            .open_nofollow(Path::new("tmp/../etc/secret"), flags)
            .is_err());
    }
}
