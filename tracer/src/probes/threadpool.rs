//! Finds where a process runs libuv's threadpool: the module that defines
//! `uv_queue_work` (node itself when it bundles libuv, as the official
//! builds do; a shared libuv.so or libnode.so otherwise), and the file
//! offsets of the functions of the attach table
//! (`tracer_common::programs::THREADPOOL`, see threadpool.bpf.c).
//!
//! A process without libuv (not node) has nothing to follow; a libuv whose
//! static `uv__queue_work` is not in its symbol table (a stripped
//! libuv.so) cannot be followed: both are told as a `Skip`, never an error,
//! and the target is traced without the links.
use std::path::{Path, PathBuf};

use tracer_common::programs::THREADPOOL;

use super::allocator::{functions_named, loader, mapped_files, Functions};

/// The module of a process to probe for its threadpool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threadpool {
    /// The path as the process sees it.
    pub module: String,
    /// The same file reached from here: for a PID, its mapping's
    /// /proc/PID/map_files link (see `allocator::for_pid` for why not a
    /// path under /proc/PID/root).
    pub path: PathBuf,
    /// Attach-table symbol -> function.
    pub functions: Functions,
}

/// Why a process's threadpool is not followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No module defines `uv_queue_work`: not a libuv program.
    NoLibuv,
    /// `module` defines `uv_queue_work` but not `symbol`.
    Missing {
        module: String,
        symbol: &'static str,
    },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NoLibuv => write!(f, "no module defines uv_queue_work"),
            Skip::Missing { module, symbol } => {
                write!(
                    f,
                    "{module} defines uv_queue_work but not {symbol} (stripped symbol table?)"
                )
            }
        }
    }
}

/// `$OFFHEAP_NO_THREADPOOL` set: no target's threadpool is probed. For
/// `cargo xtask bench`, which measures what the probes cost against runs
/// without them.
pub fn disabled() -> bool {
    std::env::var_os("OFFHEAP_NO_THREADPOOL").is_some()
}

fn file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// Libraries that may carry libuv for node: libuv itself, and node's
/// shared-library build.
fn may_hold_libuv(module: &str) -> bool {
    let name = file_name(module);
    name.starts_with("libuv.so") || name.starts_with("libnode.so")
}

fn table_symbol(name: &str) -> Option<&'static str> {
    THREADPOOL
        .iter()
        .find(|p| p.symbol == name)
        .map(|p| p.symbol)
}

/// The first of `candidates` (paths as the process sees them, each reached
/// from here at `reach(path)`) that defines `uv_queue_work`, with every
/// required function.
fn choose(
    candidates: &[String],
    reach: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Threadpool, Skip> {
    for module in candidates {
        let Some(path) = reach(module) else {
            continue;
        };
        let Ok(functions) = functions_named(&path, table_symbol) else {
            continue;
        };
        if !functions.contains_key("uv_queue_work") {
            continue;
        }
        if let Some(p) = THREADPOOL
            .iter()
            .find(|p| p.required && !functions.contains_key(p.symbol))
        {
            return Err(Skip::Missing {
                module: module.clone(),
                symbol: p.symbol,
            });
        }
        return Ok(Threadpool {
            module: module.clone(),
            path,
            functions,
        });
    }
    Err(Skip::NoLibuv)
}

/// The threadpool module of a running process: its executable, else a
/// mapped libuv or libnode, each read through its mapping's map_files link.
pub fn for_pid(pid: u32) -> Result<Threadpool, Skip> {
    let Ok(maps) = crate::proc::maps::read(pid) else {
        return Err(Skip::NoLibuv);
    };
    let modules = crate::proc::maps::modules(&maps);
    let mapped = mapped_files(pid, &maps);
    let exe = crate::proc::info::exe(pid);
    let mut candidates: Vec<String> = exe.into_iter().collect();
    candidates.extend(modules.into_iter().filter(|m| may_hold_libuv(m)));
    choose(&candidates, |m| mapped.get(m).cloned())
}

/// The threadpool module a command will use once exec'd: its executable,
/// else a libuv or libnode its dynamic linker will load.
pub fn for_exec(exe: &Path) -> Result<Threadpool, Skip> {
    let mut candidates = vec![exe.to_string_lossy().into_owned()];
    if let Ok(objects) = loader::loaded_objects(exe) {
        candidates.extend(objects.into_iter().filter(|m| may_hold_libuv(m)));
    }
    choose(&candidates, |m| Some(PathBuf::from(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node v20 from the system (official build: libuv bundled, .symtab
    /// kept): every function of the table, in node itself.
    #[test]
    fn node_bundles_libuv_with_its_static_functions() {
        let node = Path::new("/usr/bin/node");
        let tp = for_exec(node).expect("node defines the threadpool functions");
        assert_eq!(tp.module, "/usr/bin/node");
        let mut found: Vec<_> = tp.functions.keys().copied().collect();
        found.sort();
        assert_eq!(found, ["uv__queue_work", "uv_async_send", "uv_queue_work"]);
        // uv__queue_work is a tail call of 13 bytes (lea, mov, mov, jmp).
        assert_eq!(tp.functions["uv__queue_work"].len, 13);
    }

    /// A running node whose file was replaced by a symlink (a target can
    /// do that to its own files): the module is still the one it mapped,
    /// read through map_files. A path through /proc/PID/root would follow
    /// the symlink from offheap's root (here to /bin/true, no libuv).
    #[test]
    fn running_node_read_through_map_files_not_its_path() {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("offheap-tp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let node = dir.join("node");
        // A hard link: the same inode as /usr/bin/node, under a name the
        // test may replace (same file system here).
        std::fs::hard_link("/usr/bin/node", &node).unwrap();
        let mut child = std::process::Command::new(&node)
            .args(["-e", "console.log('ready'); setInterval(() => {}, 1000)"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink("/bin/true", &link).unwrap();
        std::fs::rename(&link, &node).unwrap();
        let pid = child.id();
        let found = for_pid(pid);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        let tp = found.expect("node's threadpool, through its mapping");
        assert_eq!(tp.module, node.to_string_lossy());
        assert!(tp.path.starts_with(format!("/proc/{pid}/map_files/")));
        assert_eq!(tp.functions.len(), 3);
    }

    #[test]
    fn a_program_without_libuv_is_skipped() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(for_exec(&exe), Err(Skip::NoLibuv));
    }
}
