//! Helpers shared by the symbols_* integration tests: compile fixtures with cc,
//! run real processes, read what they print.
#![allow(dead_code)]
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

/// A fresh directory for one test, under cargo's per-target tmp dir (not /tmp:
/// the namespaced tests mount a private /tmp).
pub fn workdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("symbols")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `src` (written to dir/<stem>.c) into `out` with `cc`; panics with cc's stderr.
pub fn cc(dir: &Path, stem: &str, src: &str, out: &Path, args: &[&str]) -> PathBuf {
    let c = dir.join(format!("{stem}.c"));
    std::fs::write(&c, src).unwrap();
    let o = Command::new("cc")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(&c)
        .output()
        .expect("cc is installed");
    assert!(
        o.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    c
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    pub stdin: Option<ChildStdin>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fixture");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Proc {
            child,
            stdout,
            stdin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the process prints (blocks until it does; panics on EOF).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.stdout.read_line(&mut l).unwrap();
        assert!(n > 0, "fixture exited before printing");
        l.trim_end().to_string()
    }

    /// The lines the process prints until it closes stdout (exits).
    pub fn stdout_lines(&mut self) -> Vec<String> {
        (&mut self.stdout).lines().map_while(Result::ok).collect()
    }

    /// Writes raw bytes to the process's stdin (a fixture's readSync(0)
    /// takes one byte: no newline).
    pub fn send_bytes(&mut self, b: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b).unwrap();
        stdin.flush().unwrap();
    }

    pub fn send(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{s}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses `0x7f...` (as printf("%p") prints it).
pub fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
}

/// The value after `key` in a `key value` line.
pub fn field(line: &str, key: &str) -> String {
    let mut it = line.split_whitespace();
    assert_eq!(it.next(), Some(key), "unexpected line {line:?}");
    it.next().unwrap().to_string()
}
