//! The addon package each module of a captured process belongs to, found
//! while the process lives: classify/addon.rs's rules on the process's
//! modules (their paths and dynamic sections), and the package names read
//! from `package.json` files through /proc/PID/root (the process's own
//! filesystem, for containers).
use std::{
    collections::{HashMap, HashSet},
    io::Read,
    path::Path,
};

use crate::{
    classify::addon::{owners, package_name, LoadedModule, Owner},
    proc::root::Root,
};

use super::{dynamic::DynamicNames, MapEntry, Module};

/// A `package.json` larger than this is not read (npm's are a few KiB).
const MAX_PACKAGE_JSON: u64 = 1 << 20;

/// `package.json` names already read for a process, by directory.
#[derive(Default)]
pub struct PackageNames {
    by_dir: HashMap<String, Option<String>>,
}

impl PackageNames {
    /// The `name` of `<dir>/package.json` as `pid` sees it.
    fn name_in(&mut self, pid: u32, dir: &str) -> Option<String> {
        self.by_dir
            .entry(dir.to_string())
            .or_insert_with(|| read_name(pid, dir))
            .clone()
    }
}

fn read_name(pid: u32, dir: &str) -> Option<String> {
    let dir = dir.trim_end_matches('/');
    // Inside the process's root: a container's symlink stays in it.
    let root = Root::of_process(pid).ok()?;
    let file = root.open(Path::new(&format!("{dir}/package.json"))).ok()?;
    let mut text = String::new();
    file.take(MAX_PACKAGE_JSON).read_to_string(&mut text).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("name")?
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// Module path -> the package of the addon it belongs to, for the mapped
/// modules of the live process `pid`.
pub fn of_process<'a>(
    pid: u32,
    maps: impl Iterator<Item = (&'a MapEntry, Option<&'a Module>)>,
    names: &mut PackageNames,
) -> HashMap<String, String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut seen = HashSet::new();
    let modules: Vec<(&str, Option<&DynamicNames>)> = maps
        .filter_map(|(entry, module)| {
            let path = entry.path()?;
            seen.insert(path)
                .then(|| (path, module.map(|m| &m.dynamic)))
        })
        .collect();
    packages(pid, &modules, exe.as_deref(), names)
}

/// Module path -> the package of the addon it belongs to, for the modules
/// (path as the process sees it, dynamic names when it was parsed) of `pid`,
/// whose executable is `exe`.
pub fn packages(
    pid: u32,
    modules: &[(&str, Option<&DynamicNames>)],
    exe: Option<&str>,
    names: &mut PackageNames,
) -> HashMap<String, String> {
    let none = DynamicNames::default();
    let loaded: Vec<LoadedModule<'_>> = modules
        .iter()
        .map(|(path, dynamic)| {
            let d = dynamic.unwrap_or(&none);
            LoadedModule {
                path,
                soname: d.soname.as_deref(),
                needed: &d.needed,
            }
        })
        .collect();
    let mut out = HashMap::new();
    for (i, owner) in owners(&loaded, exe).into_iter().enumerate() {
        let named_by = match owner {
            Owner::None => continue,
            Owner::Addon(a) => loaded[a].path,
            Owner::Package => loaded[i].path,
        };
        let name = package_name(named_by, |dir| names.name_in(pid, dir));
        out.insert(loaded[i].path.to_string(), name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_json_read_through_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("node_modules/@img/sharp-linux-x64");
        std::fs::create_dir_all(pkg.join("lib")).unwrap();
        std::fs::write(
            pkg.join("package.json"),
            r#"{"name": "@img/sharp-linux-x64", "version": "0.34.5"}"#,
        )
        .unwrap();
        // A package.json without a name (as some packages put in lib/).
        std::fs::write(pkg.join("lib/package.json"), r#"{"type": "module"}"#).unwrap();
        let addon = pkg.join("lib/sharp-linux-x64.node");
        let addon = addon.to_str().unwrap();
        let libvips = dir
            .path()
            .join("node_modules/@img/sharp-libvips-linux-x64/lib/libvips-cpp.so.8");
        let libvips = libvips.to_str().unwrap();
        let needs = DynamicNames {
            soname: None,
            needed: vec!["libvips-cpp.so.8".into()],
        };
        let mut names = PackageNames::default();
        let got = packages(
            std::process::id(),
            &[
                ("/usr/bin/node", None),
                (addon, Some(&needs)),
                (libvips, None),
            ],
            Some("/usr/bin/node"),
            &mut names,
        );
        let want: HashMap<String, String> = [
            (addon.to_string(), "@img/sharp-linux-x64".to_string()),
            (libvips.to_string(), "@img/sharp-linux-x64".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }
}
