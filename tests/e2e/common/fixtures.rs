//! C fixtures and N-API addons compiled for the tests, and what they document.
use super::*;

/// Compiles tests/fixtures/<name>.c with frame pointers and no sibling calls,
/// so that each site's allocation call returns into the site.
pub fn build_fixture(name: &str, dir: &Path) -> PathBuf {
    compile_fixture("cc", &format!("{name}.c"), &["-pthread"], dir.join(name))
}

/// tests/fixtures/leaky_addon.c built as `leaky.node` in `dir` (N-API:
/// one build runs on every node version).
pub fn build_leaky_addon(dir: &Path) -> PathBuf {
    compile_addon(
        &workspace().join("tests/fixtures/leaky_addon.c"),
        dir.join("leaky.node"),
    )
}

/// An N-API addon from C source `src`, as node-gyp would build it minus
/// its optimisation (frame pointers kept), into `out`.
fn compile_addon(src: &Path, out: PathBuf) -> PathBuf {
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer"])
        .arg("-I/usr/include/node")
        .arg(src)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("running cc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The C++ runtime a C++ fixture is built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CxxRuntime {
    /// GCC's libstdc++ (g++).
    Libstdcxx,
    /// LLVM's libc++ and libc++abi (clang++ -stdlib=libc++).
    Libcxx,
}

/// Compiles tests/fixtures/<name>.cc the same way as `build_fixture`, in
/// `dir`, linked against the shared C++ runtime `rt` of the system.
pub fn build_cxx_fixture(name: &str, dir: &Path, rt: CxxRuntime) -> PathBuf {
    let (compiler, extra): (&str, &[&str]) = match rt {
        CxxRuntime::Libstdcxx => ("g++", &[]),
        CxxRuntime::Libcxx => ("clang++-19", &["-stdlib=libc++"]),
    };
    compile_fixture(compiler, &format!("{name}.cc"), extra, dir.join(name))
}

fn compile_fixture(compiler: &str, file: &str, extra: &[&str], out: PathBuf) -> PathBuf {
    let src = workspace().join("tests/fixtures").join(file);
    let o = Command::new(compiler)
        .args([
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-Wall",
            "-Werror",
        ])
        .args(extra)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        o.status.success(),
        "{compiler} {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Function sizes from `nm -S` (name -> size in bytes).
pub fn symbol_sizes(bin: &Path) -> HashMap<String, u64> {
    let o = Command::new("nm")
        .arg("-S")
        .arg("--defined-only")
        .arg(bin)
        .output()
        .expect("running nm");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[3].to_string(), u64::from_str_radix(f[1], 16).unwrap()))
        })
        .collect()
}

/// Parses the fixture's "site <name> <addr>" lines.
pub fn parse_sites(lines: &[String]) -> HashMap<String, u64> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "site").then_some(())?;
            let name = f.next()?.to_string();
            let addr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((name, addr))
        })
        .collect()
}

/// What a fixture documents of one site: (function, live_bytes,
/// live_allocs, total_bytes, total_allocs).
pub type SiteFigures<'a> = (&'a str, u64, u64, u64, u64);

/// (site, live_bytes, live_allocs, total_bytes, total_allocs) as basic.c
/// documents them. pvalloc counts whole pages (the tool's definition, like
/// glibc's); mmap counts what is still mapped after the partial munmap.
pub const BASIC_SITES: &[SiteFigures] = &[
    ("site_malloc", 3000, 3, 3000, 3),
    ("site_malloc_freed", 0, 0, 3108, 4),
    ("site_calloc", 1000, 1, 1000, 1),
    // malloc 100 -> realloc 200 -> 5000 -> 300; realloc(NULL, 64); malloc 128
    // then realloc(q, 0), which frees q and records nothing.
    ("site_realloc", 364, 2, 100 + 200 + 5000 + 300 + 64 + 128, 6),
    ("site_reallocarray", 600, 1, 300 + 600, 2),
    ("site_posix_memalign", 1024, 1, 1024, 1),
    ("site_aligned_alloc", 2048, 1, 2048, 1),
    ("site_memalign", 3000, 1, 3000, 1),
    ("site_valloc", 5000, 1, 5000, 1),
    ("site_pvalloc", 8192, 1, 8192, 1),
    ("site_mmap", 12 * 4096, 1, 16 * 4096, 1),
    ("site_mmap_shared", 0, 0, 0, 0),
    ("site_mmap_reserve", 0, 0, 0, 0),
    // mmap 4 pages, then mremap to 8: one mapping, grown under its stack.
    ("site_mremap", 8 * 4096, 1, 8 * 4096, 1),
    ("site_syscall_mmap", 2 * 4096, 1, 2 * 4096, 1),
    ("site_brk", 16 * 4096, 1, 16 * 4096, 1),
    ("site_churn", 0, 0, 200_000 * 64, 200_000),
    ("site_thread", 4321, 1, 4321, 1),
];

/// Compiles the C source of a node addon (N-API, against node's headers in
/// /usr/include/node) into `dir/<name>.node`, with frame pointers and
/// symbols so that its functions name their frames.
pub fn build_napi_addon(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    compile_addon(&src, dir.join(format!("{name}.node")))
}

/// A static, stripped program that sleeps until killed: it maps no module
/// that names malloc, so `record --pid` of it waits in the attach (for a
/// dynamic linker that never maps libc) until it gives up, 2 s later.
pub fn static_sleeper(dir: &Path) -> Child {
    let src = dir.join("static_sleeper.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )
    .unwrap();
    let bin = dir.join("static_sleeper");
    let o = Command::new("cc")
        .args(["-static", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Command::new(&bin).stdin(Stdio::null()).spawn().unwrap()
}
