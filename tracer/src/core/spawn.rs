//! `offheap run`: fork a child that waits on a pipe before exec, so that every
//! probe is attached before the command makes its first allocation.
//!
//! std::process::Command cannot do this: spawn() blocks until the child has
//! exec'd. Between fork and exec the child only makes async-signal-safe calls
//! (close, read, execv, _exit), as POSIX requires of a forked multi-threaded
//! process (fork(2)).
use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("{0} is not executable (no execute permission)")]
    NotExecutable(PathBuf),
    #[error("{0} is a directory, not a command")]
    IsDirectory(PathBuf),
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("{call}")]
    Os {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot execute {cmd}")]
    Exec {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// A forked child, held before exec.
pub struct HeldChild {
    pub pid: u32,
    pub exe: PathBuf,
    release: Option<OwnedFd>,
    exec_status: Option<OwnedFd>,
}

/// What a path is, for running it.
enum Candidate {
    Executable,
    NotExecutable,
    Directory,
    Missing,
}

fn candidate(p: &Path) -> Candidate {
    use std::os::unix::fs::PermissionsExt;
    match p.metadata() {
        // Root may execute a file that has any execute bit (execve(2)).
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Candidate::Executable,
        Ok(m) if m.is_dir() => Candidate::Directory,
        Ok(_) => Candidate::NotExecutable,
        Err(_) => Candidate::Missing,
    }
}

/// Finds CMD like execvp(3): a name with a slash is a path, else search
/// PATH. As execvp does, a file found in PATH without execute permission is
/// reported as such (EACCES) when no executable one comes after it.
pub fn resolve(cmd: &str) -> Result<PathBuf, SpawnError> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match candidate(&p) {
            Candidate::Executable => Ok(p),
            Candidate::NotExecutable => Err(SpawnError::NotExecutable(p)),
            Candidate::Directory => Err(SpawnError::IsDirectory(p)),
            Candidate::Missing => Err(SpawnError::NotFound(cmd.into())),
        };
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for dir in path.split(':') {
        let p = Path::new(if dir.is_empty() { "." } else { dir }).join(cmd);
        match candidate(&p) {
            Candidate::Executable => return Ok(p),
            Candidate::NotExecutable => {
                not_executable.get_or_insert(p);
            }
            Candidate::Directory | Candidate::Missing => {}
        }
    }
    Err(match not_executable {
        Some(p) => SpawnError::NotExecutable(p),
        None => SpawnError::NotFound(cmd.into()),
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Os {
            call: "pipe2",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks the child; it execs `argv` once `release` is called.
pub fn spawn_held(argv: &[String]) -> Result<HeldChild, SpawnError> {
    let exe = resolve(&argv[0])?;
    let c = |s: &str| CString::new(s).map_err(|_| SpawnError::Nul(s.into()));
    let path = c(&exe.to_string_lossy())?;
    let args: Vec<CString> = argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let (hold_r, hold_w) = pipe()?;
    let (status_r, status_w) = pipe()?;

    // SAFETY: the child branch below only calls async-signal-safe functions
    // on memory prepared before fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Os {
            call: "fork",
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // Child.
        unsafe {
            libc::close(hold_w.as_raw_fd());
            let mut b = 0u8;
            let n = loop {
                let n = libc::read(hold_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            if n != 1 {
                // The parent went away without releasing us: never run untraced.
                libc::_exit(127);
            }
            // Rust's runtime ignores SIGPIPE, and an ignored signal stays
            // ignored across exec (signal(7)): give the command the default
            // disposition and an empty mask, as std::process::Command does.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execv(path.as_ptr(), arg_ptrs.as_ptr());
            let err: i32 = *libc::__errno_location();
            libc::write(
                status_w.as_raw_fd(),
                (&err as *const i32).cast(),
                std::mem::size_of::<i32>(),
            );
            libc::_exit(127);
        }
    }
    drop(hold_r);
    drop(status_w);
    Ok(HeldChild {
        pid: pid as u32,
        exe,
        release: Some(hold_w),
        exec_status: Some(status_r),
    })
}

impl HeldChild {
    /// Lets the child exec, and waits until it has (the status pipe is
    /// close-on-exec, so EOF means exec succeeded).
    pub fn release(&mut self, cmd: &str) -> Result<(), SpawnError> {
        if let Some(w) = self.release.take() {
            let b = 1u8;
            // SAFETY: writing one byte from a valid buffer to an owned fd.
            unsafe { libc::write(w.as_raw_fd(), (&b as *const u8).cast(), 1) };
        }
        let Some(r) = self.exec_status.take() else {
            return Ok(());
        };
        let mut err = 0i32;
        let n = loop {
            // SAFETY: reading into a valid i32 from an owned fd.
            let n = unsafe {
                libc::read(
                    r.as_raw_fd(),
                    (&mut err as *mut i32).cast(),
                    std::mem::size_of::<i32>(),
                )
            };
            if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n == std::mem::size_of::<i32>() as isize {
            return Err(SpawnError::Exec {
                cmd: cmd.into(),
                source: std::io::Error::from_raw_os_error(err),
            });
        }
        Ok(())
    }

    /// Kills a child that must not run (tracing could not start).
    pub fn abort(self) {
        // SAFETY: plain syscalls on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
    }
}

/// Reaps an exited child and describes how it ended.
pub fn reap(pid: u32) -> Option<String> {
    let mut status = 0;
    // SAFETY: status is a valid int; pid is our child.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if r != pid as i32 {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status}")
    })
}

/// What a command's comm will be after exec: the file name, truncated to
/// TASK_COMM_LEN - 1 bytes (exec(2), proc(5)).
pub fn comm_of(exe: &Path) -> String {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(15).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn resolve_tells_missing_from_not_executable() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("app.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = script.to_str().unwrap();
        assert_eq!(
            resolve(s).unwrap_err().to_string(),
            format!("{s} is not executable (no execute permission)")
        );
        assert_eq!(
            resolve(d.path().to_str().unwrap()).unwrap_err().to_string(),
            format!("{} is a directory, not a command", d.path().display())
        );
        assert_eq!(
            resolve("/nonexistent/x").unwrap_err().to_string(),
            "command not found: /nonexistent/x"
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve(s).unwrap(), script);
        assert_eq!(resolve("sh").unwrap().file_name().unwrap(), "sh");
    }
}
