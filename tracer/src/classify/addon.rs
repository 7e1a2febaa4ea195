//! Rule 3's module half: which modules of a process belong to a native
//! addon, and which package that addon is. The symbolizer applies it to each
//! process it captures (symbols/addons.rs) and marks the frames of those
//! modules with the package (`Frame::addon`); `classify` then only looks at
//! the frames.
//!
//! A module belongs to an addon when
//! - it is a `.node` file: the addon itself;
//! - or an addon brought it in: it is in the addon's DT_NEEDED closure (its
//!   needed libraries, theirs, and so on, matched with the process's modules
//!   by DT_SONAME or file name, as ld.so matches them), e.g. sharp's
//!   `libvips-cpp.so` next to `sharp-linux-x64.node`. It then belongs to the
//!   first addon (in the process's address order) that needs it;
//! - or it sits under a `node_modules` directory (a prebuilt library that an
//!   addon dlopen()s rather than links): it belongs to its own package.
//!
//! Never to an addon: the executable and its own DT_NEEDED closure (libc,
//! libstdc++, a shared libuv or zlib a distribution's node links), even when
//! an addon needs them too or node itself runs from node_modules; their
//! memory is node's or the process's. Without frame pointers in an addon's
//! library a stack may hold that library's frames alone: this rule still
//! finds the addon.
//!
//! The package a module belongs to is named by the nearest `package.json`
//! with a `name` above it, looked for from its directory up to its package
//! root (the directory right under `node_modules`, or under
//! `node_modules/@scope`); outside node_modules, up to `/` (an app's own
//! addon is the app's). Where no such file is readable, the path names it:
//! the component after the last `node_modules` (two for a `@scope`). Failing
//! both, the module's file name (`leaky.node`).
use std::collections::{HashMap, VecDeque};

/// One module a process maps, as the symbolizer knows it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedModule<'a> {
    /// The path as the process sees it.
    pub path: &'a str,
    pub soname: Option<&'a str>,
    /// DT_NEEDED, in order.
    pub needed: &'a [String],
}

/// Whose a module is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Not an addon's.
    None,
    /// The addon at this index of the modules: a `.node` file (itself), or
    /// one that brought this module in.
    Addon(usize),
    /// A module under node_modules that no addon needs: its package's.
    Package,
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_addon_file(path: &str) -> bool {
    file_name(path).ends_with(".node")
}

fn under_node_modules(path: &str) -> bool {
    path.split('/').any(|c| c == "node_modules")
}

/// The owner of each of `modules` (same order); `exe` is the executable's
/// path as the process sees it.
pub fn owners(modules: &[LoadedModule<'_>], exe: Option<&str>) -> Vec<Owner> {
    // ld.so matches a DT_NEEDED name with a loaded object's soname (or, for
    // one without, its file name).
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, m) in modules.iter().enumerate() {
        by_name.entry(file_name(m.path)).or_insert(i);
        if let Some(s) = m.soname {
            by_name.entry(s).or_insert(i);
        }
    }
    let closure = |start: usize| -> Vec<usize> {
        let mut seen = vec![false; modules.len()];
        let mut queue = VecDeque::from([start]);
        let mut out = Vec::new();
        while let Some(i) = queue.pop_front() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push(i);
            for n in modules[i].needed {
                if let Some(&j) = by_name.get(n.as_str()) {
                    queue.push_back(j);
                }
            }
        }
        out
    };
    let mut owner = vec![Owner::None; modules.len()];
    let mut of_exe = vec![false; modules.len()];
    if let Some(e) = exe.and_then(|e| modules.iter().position(|m| m.path == e)) {
        for i in closure(e) {
            of_exe[i] = true;
        }
    }
    let addons: Vec<usize> = (0..modules.len())
        .filter(|&i| !of_exe[i] && is_addon_file(modules[i].path))
        .collect();
    for &a in &addons {
        owner[a] = Owner::Addon(a);
    }
    for &a in &addons {
        for i in closure(a) {
            if !of_exe[i] && owner[i] == Owner::None {
                owner[i] = Owner::Addon(a);
            }
        }
    }
    for (i, m) in modules.iter().enumerate() {
        if !of_exe[i] && owner[i] == Owner::None && under_node_modules(m.path) {
            owner[i] = Owner::Package;
        }
    }
    owner
}

/// The directories whose `package.json` may name the package of the module
/// at `path`, nearest first: up to its package root under node_modules, or
/// up to `/` outside it.
pub fn package_json_dirs(path: &str) -> Vec<&str> {
    let mut dirs = Vec::new();
    let mut cur = path;
    while let Some(i) = cur.rfind('/') {
        let dir = &cur[..i];
        let parent = dir.rsplit_once('/').map_or("", |(p, _)| p);
        dirs.push(if dir.is_empty() { "/" } else { dir });
        let parent_name = file_name(parent);
        let grandparent = parent.rsplit_once('/').map_or("", |(g, _)| g);
        let package_root = parent_name == "node_modules"
            || (parent_name.starts_with('@') && file_name(grandparent) == "node_modules");
        if package_root || dir.is_empty() {
            break;
        }
        cur = dir;
    }
    dirs
}

/// The package the path itself names: what follows its last `node_modules`
/// component (`@scope/name` for a scoped one).
pub fn package_in_path(path: &str) -> Option<&str> {
    let (_, rest) = path.rsplit_once("/node_modules/")?;
    let mut parts = rest.splitn(3, '/');
    let first = parts.next().filter(|s| !s.is_empty())?;
    if first.starts_with('@') {
        let second = parts.next().filter(|s| !s.is_empty())?;
        let end = first.len() + 1 + second.len();
        return Some(&rest[..end]);
    }
    Some(first)
}

/// The name of the package whose `package.json` at `dirs` (nearest first)
/// `name_in(dir)` reads first, else the path's, else the file name.
pub fn package_name(path: &str, mut name_in: impl FnMut(&str) -> Option<String>) -> String {
    package_json_dirs(path)
        .into_iter()
        .find_map(&mut name_in)
        .or_else(|| package_in_path(path).map(str::to_string))
        .unwrap_or_else(|| file_name(path).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARP: &str = "/srv/app/node_modules/@img/sharp-linux-x64/lib/sharp-linux-x64.node";
    const VIPS: &str =
        "/srv/app/node_modules/@img/sharp-libvips-linux-x64/lib/libvips-cpp.so.8.17.3";

    fn m<'a>(path: &'a str, soname: Option<&'a str>, needed: &'a [String]) -> LoadedModule<'a> {
        LoadedModule {
            path,
            soname,
            needed,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sharp_and_its_libvips_belong_to_sharp_system_libraries_to_node() {
        // `readelf -d` of sharp 0.34.5's prebuilt addon and of node 20.
        let node_needs = names(&["libstdc++.so.6", "libm.so.6", "libc.so.6"]);
        let sharp_needs = names(&["libvips-cpp.so.8.17.3", "libstdc++.so.6", "libc.so.6"]);
        let vips_needs = names(&["libresolv.so.2", "libstdc++.so.6", "libc.so.6"]);
        let none: Vec<String> = Vec::new();
        let modules = [
            m("/usr/bin/node", None, &node_needs),
            m(
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
                Some("libstdc++.so.6"),
                &none,
            ),
            m(
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                Some("libc.so.6"),
                &none,
            ),
            m(SHARP, Some("sharp-linux-x64.node"), &sharp_needs),
            m(VIPS, Some("libvips-cpp.so.8.17.3"), &vips_needs),
            // Needed by libvips only: the addon brought it in.
            m(
                "/usr/lib/x86_64-linux-gnu/libresolv.so.2",
                Some("libresolv.so.2"),
                &none,
            ),
            m("/srv/app/node_modules/x/prebuilt/libx.so", None, &none),
        ];
        assert_eq!(
            owners(&modules, Some("/usr/bin/node")),
            [
                Owner::None,
                Owner::None,
                Owner::None,
                Owner::Addon(3),
                Owner::Addon(3),
                Owner::Addon(3),
                Owner::Package,
            ]
        );
    }

    #[test]
    fn node_from_node_modules_is_never_an_addon() {
        let needs = names(&["libz.so.1"]);
        let none: Vec<String> = Vec::new();
        let exe = "/srv/app/node_modules/node/bin/node";
        let modules = [
            m(exe, None, &needs),
            m("/usr/lib/libz.so.1.2.13", Some("libz.so.1"), &none),
            m("/srv/app/node_modules/a/a.node", None, &needs),
        ];
        assert_eq!(
            owners(&modules, Some(exe)),
            [Owner::None, Owner::None, Owner::Addon(2)]
        );
        // Without the executable known, a library an addon needs is the addon's.
        assert_eq!(
            owners(&modules, None),
            [Owner::Package, Owner::Addon(2), Owner::Addon(2)]
        );
    }

    #[test]
    fn a_library_two_addons_need_is_the_first_ones() {
        let needs = names(&["libshared.so"]);
        let none: Vec<String> = Vec::new();
        let modules = [
            m("/a/build/Release/a.node", None, &needs),
            m("/b/build/Release/b.node", None, &needs),
            m("/opt/lib/libshared.so", None, &none),
        ];
        assert_eq!(
            owners(&modules, None),
            [Owner::Addon(0), Owner::Addon(1), Owner::Addon(0)]
        );
    }

    #[test]
    fn package_json_is_looked_for_up_to_the_package_root() {
        assert_eq!(
            package_json_dirs(SHARP),
            [
                "/srv/app/node_modules/@img/sharp-linux-x64/lib",
                "/srv/app/node_modules/@img/sharp-linux-x64"
            ]
        );
        assert_eq!(
            package_json_dirs("/srv/app/node_modules/leaky/build/Release/leaky.node"),
            [
                "/srv/app/node_modules/leaky/build/Release",
                "/srv/app/node_modules/leaky/build",
                "/srv/app/node_modules/leaky"
            ]
        );
        assert_eq!(
            package_json_dirs("/srv/app/build/x.node"),
            ["/srv/app/build", "/srv/app", "/srv", "/"]
        );
    }

    #[test]
    fn package_names() {
        assert_eq!(package_in_path(SHARP), Some("@img/sharp-linux-x64"));
        assert_eq!(
            package_in_path("/a/node_modules/.pnpm/sharp@0.34.5/node_modules/sharp/build/x.node"),
            Some("sharp")
        );
        assert_eq!(package_in_path("/srv/app/build/x.node"), None);
        assert_eq!(package_in_path("/srv/node_modules/@scope"), None);
        // package.json wins; then the path; then the file name.
        let json = |dir: &str| {
            (dir == "/srv/app/node_modules/@img/sharp-linux-x64").then(|| "declared".to_string())
        };
        assert_eq!(package_name(SHARP, json), "declared");
        assert_eq!(package_name(SHARP, |_| None), "@img/sharp-linux-x64");
        assert_eq!(package_name("/opt/x/leaky.node", |_| None), "leaky.node");
    }
}
