//! What bounds a process's memory, read from /proc while it lives: node's
//! V8 heap flags (`--max-old-space-size`, `--max-semi-space-size`, on its
//! command line or in `NODE_OPTIONS`), the host's memory and its memory
//! cgroup's limit. `report::verdict` turns them into V8's effective heap
//! limit and weighs it against the container's.
use std::{fs, sync::OnceLock};

use serde::{Deserialize, Serialize};

use super::cgroup::{self, Mounts};

/// Where a V8 flag was set. node reads `NODE_OPTIONS` first and its command
/// line after, and V8 keeps the last value of a flag: the command line wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagSource {
    CommandLine,
    NodeOptions,
}

/// A V8 size flag in MiB, and where it was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeFlag {
    pub mib: u64,
    pub from: FlagSource,
}

/// The figures that bound a process's memory, as read while it lived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLimits {
    /// The executable is node (`node`, `nodejs`, `node20`...).
    pub node: bool,
    /// `--max-old-space-size`: V8's old generation limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_old_space_size: Option<SizeFlag>,
    /// `--max-semi-space-size`: one of the young generation's semi-spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_semi_space_size: Option<SizeFlag>,
    /// MemTotal of the host (/proc/meminfo).
    pub host_memory_bytes: u64,
    /// The memory cgroup, as /proc/PID/cgroup names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The lowest hard limit of that cgroup and its ancestors (the one the
    /// kernel enforces first); None when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_limit_bytes: Option<u64>,
}

/// `node`, `nodejs`, `node20`, `node-18`...: a node executable's file name.
pub fn is_node_name(file_name: &str) -> bool {
    file_name == "nodejs"
        || file_name.strip_prefix("node").is_some_and(|rest| {
            rest.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
                && !rest.ends_with('.')
        })
}

/// Reads every limit of `pid`; what cannot be read is left at its default.
pub fn read(pid: u32, exe: &str) -> MemoryLimits {
    let node = is_node_name(exe.rsplit('/').next().unwrap_or(exe));
    let mut l = MemoryLimits {
        node,
        host_memory_bytes: host_memory_bytes().unwrap_or(0),
        ..MemoryLimits::default()
    };
    if node {
        let argv = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<String> = argv
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let options = super::info::environ_var(pid, "NODE_OPTIONS").unwrap_or_default();
        l.max_old_space_size = size_flag(&argv, &options, "max-old-space-size");
        l.max_semi_space_size = size_flag(&argv, &options, "max-semi-space-size");
    }
    static MOUNTS: OnceLock<Option<Mounts>> = OnceLock::new();
    if let Some(mounts) = MOUNTS.get_or_init(|| Mounts::of_this_host().ok()) {
        if let Ok(cg) = cgroup::memory_cgroup_of(pid, mounts) {
            l.cgroup_limit_bytes = cg.effective_limit_bytes();
            l.cgroup = Some(cg.path);
        }
    }
    l
}

fn host_memory_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The value of V8 flag `name` (dashes; V8 takes underscores too), from
/// node's own options on the command line, else from NODE_OPTIONS; the last
/// one of each wins, as V8 parses them in order. V8 takes `--flag=N` only
/// (`--max-old-space-size 100` is refused: "illegal value").
fn size_flag(argv: &[String], node_options: &str, name: &str) -> Option<SizeFlag> {
    let from_cmdline = last_flag(node_args(argv), name).map(|mib| SizeFlag {
        mib,
        from: FlagSource::CommandLine,
    });
    from_cmdline.or_else(|| {
        last_flag(split_options(node_options).iter().map(String::as_str), name).map(|mib| {
            SizeFlag {
                mib,
                from: FlagSource::NodeOptions,
            }
        })
    })
}

fn last_flag<'a>(args: impl Iterator<Item = &'a str>, name: &str) -> Option<u64> {
    let underscored = name.replace('-', "_");
    args.filter_map(|a| {
        let (flag, value) = a.strip_prefix("--")?.split_once('=')?;
        (flag == name || flag == underscored).then(|| value.trim().parse::<u64>().ok())?
    })
    .last()
}

/// node's options: the arguments before the script (the first argument that
/// is not an option, or what follows `--`, `-e` or `-p`); the script's own
/// arguments are not node's. Options that take a separate value skip it.
fn node_args(argv: &[String]) -> impl Iterator<Item = &str> {
    const WITH_VALUE: &[&str] = &[
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "-C",
        "--conditions",
        "--input-type",
        "--title",
        "--inspect-port",
        "--env-file",
    ];
    let mut out = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" || !a.starts_with('-') {
            break;
        }
        out.push(a);
        if ["-e", "--eval", "-p", "--print"].contains(&a) {
            break;
        }
        if WITH_VALUE.contains(&a) {
            i += 1;
        }
        i += 1;
    }
    out.into_iter()
}

/// NODE_OPTIONS split as node splits it: on spaces, with double quotes
/// grouping and backslash escaping inside them (src/node_options.cc).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_wins_over_node_options_and_the_last_flag_wins() {
        let argv = args(&["node", "--max-old-space-size=100", "app.js"]);
        assert_eq!(
            size_flag(&argv, "--max-old-space-size=300", "max-old-space-size"),
            Some(SizeFlag {
                mib: 100,
                from: FlagSource::CommandLine
            })
        );
        let argv = args(&["node", "app.js", "--max-old-space-size=100"]);
        assert_eq!(
            size_flag(
                &argv,
                "--max-old-space-size=300 --max_old_space_size=200",
                "max-old-space-size"
            ),
            Some(SizeFlag {
                mib: 200,
                from: FlagSource::NodeOptions
            }),
            "a script's own arguments are not node's"
        );
        let argv = args(&["node", "-r", "x", "--max_old_space_size=64", "app.js"]);
        assert_eq!(
            size_flag(&argv, "", "max-old-space-size").map(|f| f.mib),
            Some(64)
        );
        let argv = args(&["node", "--max-old-space-size", "64", "app.js"]);
        assert_eq!(size_flag(&argv, "", "max-old-space-size"), None);
    }

    #[test]
    fn node_options_split_like_node() {
        assert_eq!(
            split_options(r#"--a  --title "my \"app\"" --b="x y""#),
            args(&["--a", "--title", r#"my "app""#, "--b=x y"])
        );
    }

    #[test]
    fn node_names() {
        for n in ["node", "nodejs", "node20", "node-18.1"] {
            assert!(is_node_name(n), "{n}");
        }
        for n in ["nodemon", "node.", "xnode", "node_exporter"] {
            assert!(!is_node_name(n), "{n}");
        }
    }

    #[test]
    fn own_limits_are_read() {
        let l = read(std::process::id(), "/usr/bin/cargo-test");
        assert!(!l.node);
        assert!(l.host_memory_bytes > 0);
        assert!(l.cgroup.is_some());
    }
}
