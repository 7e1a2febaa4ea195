//! A module's names in its dynamic section: DT_SONAME (the name other
//! objects need it by) and DT_NEEDED (the objects it needs, by that name),
//! for classify's addon rule (what a `.node` addon brought into a process).
use object::{
    elf,
    read::elf::{Dyn, ElfFile64},
    Endianness,
};

/// DT_SONAME and the DT_NEEDED entries in order. Nothing for a file without
/// a dynamic section (a static executable) or one this cannot read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DynamicNames {
    pub soname: Option<String>,
    pub needed: Vec<String>,
}

impl DynamicNames {
    pub fn read(data: &[u8]) -> DynamicNames {
        read_elf64(data).unwrap_or_default()
    }
}

fn read_elf64(data: &[u8]) -> Option<DynamicNames> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = file.endian();
    let sections = file.elf_section_table();
    let (entries, link) = sections.dynamic(endian, data).ok()??;
    let strings = sections.strings(endian, data, link).ok()?;
    let mut out = DynamicNames::default();
    for d in entries {
        let tag = d.tag32(endian);
        if tag == Some(elf::DT_NULL) {
            break;
        }
        if tag != Some(elf::DT_NEEDED) && tag != Some(elf::DT_SONAME) {
            continue;
        }
        let Ok(name) = d.string(endian, strings) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if tag == Some(elf::DT_SONAME) {
            out.soname = Some(name);
        } else {
            out.needed.push(name);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_needs_libstdcxx_and_libc_names_itself() {
        let node = std::fs::read("/usr/bin/node").expect("node v20 is installed");
        let n = DynamicNames::read(&node);
        assert_eq!(n.soname, None);
        // `readelf -d /usr/bin/node` (Debian's node 20).
        assert_eq!(
            n.needed,
            [
                "libdl.so.2",
                "libstdc++.so.6",
                "libm.so.6",
                "libgcc_s.so.1",
                "libpthread.so.0",
                "libc.so.6",
                "ld-linux-x86-64.so.2"
            ]
        );
        let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let c = DynamicNames::read(&libc);
        assert_eq!(c.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(c.needed, ["ld-linux-x86-64.so.2"]);
    }

    #[test]
    fn junk_has_no_names() {
        assert_eq!(DynamicNames::read(b"#!/bin/sh\n"), DynamicNames::default());
        assert_eq!(DynamicNames::read(&[]), DynamicNames::default());
    }
}
