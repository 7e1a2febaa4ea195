//! V8's postmortem metadata read from real node binaries (18, 20, 22), and
//! the one-line errors for a binary without it or missing a symbol.
mod symbols_support;
mod v8_support;

use std::process::Command;

use offheap::symbols::v8::{MetadataError, V8Metadata, V8Version};
use symbols_support::workdir;
use v8_support::*;

/// (major, V8 version, JSFunction::shared, SFI type, BytecodeArray header,
/// JSFunction types, builtins size) as these builds export them.
type Expected = (u32, V8Version, u16, u16, u16, (u16, u16), u64);

#[test]
fn metadata_of_node_18_20_22() {
    let expect: &[Expected] = &[
        (18, v(10, 2, 154, 26), 24, 257, 56, (2065, 2080), 1_419_648),
        (20, v(11, 3, 244, 8), 24, 262, 54, (2066, 2081), 1_645_248),
        (22, v(12, 4, 254, 21), 32, 274, 64, (2066, 2082), 1_964_608),
    ];
    for (node, &(major, version, shared, sfi, bc_data, jsf, blob)) in
        node_versions().iter().zip(expect)
    {
        assert_eq!(node.major, major);
        let m = metadata(&node.bin);
        assert_eq!(m.version, version);
        // Frame slots have not moved since V8 9.x (frame-constants.h).
        assert_eq!(
            (
                m.fp_context,
                m.fp_function,
                m.fp_bytecode_array,
                m.fp_bytecode_offset
            ),
            (-8, -16, -32, -40)
        );
        assert_eq!((m.off_map, m.off_map_instance_type), (0, 12));
        assert_eq!(m.off_js_function_shared, shared, "node {major}");
        assert_eq!(m.type_shared_function_info, sfi, "node {major}");
        assert_eq!(m.off_bytecode_array_data, bc_data, "node {major}");
        assert_eq!(
            (m.type_js_function_first, m.type_js_function_last),
            jsf,
            "node {major}"
        );
        assert_eq!(m.off_sfi_name_or_scope_info, 16);
        assert_eq!(m.off_sfi_script, 32);
        assert_eq!(
            (
                m.off_script_name,
                m.off_script_source,
                m.off_script_line_ends
            ),
            (16, 8, 56)
        );
        assert_eq!(
            (m.scope_info_first_vars, m.scope_info_ncontextlocals),
            (3, 2)
        );
        assert_eq!(m.strings.first_nonstring_type, 128);
        // The embedded builtins: where nm puts them, with the size the blob
        // declares (v8_Default_embedded_blob_code_size_, read with readelf+dd).
        let b = m.builtins.clone().unwrap();
        let text = nm_addr(
            &node.bin,
            if major == 18 {
                "v8_Default_embedded_blob_code_data_"
            } else {
                "v8_Default_embedded_blob_code_"
            },
        );
        assert_eq!(b.start, text, "node {major}");
        assert_eq!(b.end - b.start, blob, "node {major}");
        // What no symbol gives, said once per build.
        let fallbacks: Vec<&str> = m
            .fallbacks
            .iter()
            .map(|f| f.split(' ').next().unwrap())
            .collect();
        match major {
            22 => assert_eq!(
                fallbacks,
                [
                    "SharedFunctionInfo::function_data",
                    "BytecodeArray::source_position_table"
                ]
            ),
            _ => assert_eq!(
                fallbacks,
                ["JSFunction", "BytecodeArray::source_position_table"]
            ),
        }
    }
}

fn v(major: u32, minor: u32, build: u32, patch: u32) -> V8Version {
    V8Version {
        major,
        minor,
        build,
        patch,
    }
}

fn nm_addr(bin: &std::path::Path, sym: &str) -> u64 {
    let out = Command::new("nm").arg(bin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.ends_with(&format!(" {sym}")))
        .unwrap_or_else(|| panic!("{sym} not in {}", bin.display()));
    u64::from_str_radix(line.split(' ').next().unwrap(), 16).unwrap()
}

#[test]
fn a_binary_without_v8_says_so() {
    let data = std::fs::read("/bin/true").unwrap();
    let err = V8Metadata::from_elf(&data).unwrap_err();
    assert!(matches!(err, MetadataError::NoMetadata));
    assert_eq!(
        err.to_string(),
        "no V8 postmortem metadata (no v8dbg_* symbols in .symtab: a stripped node)"
    );
}

#[test]
fn missing_metadata_is_named_in_one_line() {
    // node 18 with two of the symbols the walk needs stripped.
    let node = node_versions().remove(0);
    let dir = workdir("stripped");
    let bin = dir.join("node");
    let st = Command::new("objcopy")
        .args([
            "--strip-symbol=v8dbg_off_fp_function",
            "--strip-symbol=v8dbg_class_Script__name__Object",
        ])
        .arg(&node.bin)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&bin).unwrap();
    let err = V8Metadata::from_elf(&data).unwrap_err();
    assert_eq!(
        err.to_string(),
        "V8 10.2.154.26 lacks metadata off_fp_function, class_Script__name__Object"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
