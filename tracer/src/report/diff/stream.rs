//! Reading one side of a diff from a JSON report without holding the report:
//! serde visits `processes[].stacks[]` and each stack goes into the
//! `DiffIndex` as soon as it is parsed, then is dropped. Only `schema`,
//! `mode`, each process's `buckets` and its stacks are read; every other
//! field is skipped unparsed (serde's `IgnoredAny`).
use std::{fmt, io::Read};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::DiffIndex;
use crate::report::{Buckets, Mode, StackReport};

/// What a side says about itself besides its stacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Side {
    pub schema: String,
    pub mode: Option<Mode>,
    pub processes: usize,
    pub stacks: usize,
}

/// Reads a JSON report from `r` into `index` as BEFORE or AFTER.
pub fn read_into(
    r: impl Read,
    index: &mut DiffIndex,
    is_after: bool,
) -> Result<Side, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(r);
    let side = ReportSeed { index, is_after }.deserialize(&mut de)?;
    de.end()?;
    Ok(side)
}

struct ReportSeed<'a> {
    index: &'a mut DiffIndex,
    is_after: bool,
}

impl<'de> DeserializeSeed<'de> for ReportSeed<'_> {
    type Value = Side;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Side, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReportSeed<'_> {
    type Value = Side;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an offheap report (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Side, A::Error> {
        let mut side = Side::default();
        let mut schema = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "schema" => schema = Some(map.next_value()?),
                "mode" => side.mode = Some(map.next_value()?),
                "processes" => {
                    let (p, s) = map.next_value_seed(ProcessesSeed {
                        index: &mut *self.index,
                        is_after: self.is_after,
                    })?;
                    side.processes = p;
                    side.stacks = s;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        side.schema = schema.ok_or_else(|| de::Error::missing_field("schema"))?;
        Ok(side)
    }
}

/// `processes`: how many, and how many stacks in all.
struct ProcessesSeed<'a> {
    index: &'a mut DiffIndex,
    is_after: bool,
}

impl<'de> DeserializeSeed<'de> for ProcessesSeed<'_> {
    type Value = (usize, usize);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(usize, usize), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ProcessesSeed<'_> {
    type Value = (usize, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of processes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(usize, usize), A::Error> {
        let (mut processes, mut stacks) = (0, 0);
        while let Some(n) = seq.next_element_seed(ProcessSeed {
            index: &mut *self.index,
            is_after: self.is_after,
        })? {
            processes += 1;
            stacks += n;
        }
        Ok((processes, stacks))
    }
}

/// One process: its buckets and its stacks; the number of stacks.
struct ProcessSeed<'a> {
    index: &'a mut DiffIndex,
    is_after: bool,
}

impl<'de> DeserializeSeed<'de> for ProcessSeed<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ProcessSeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a process (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut stacks = 0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "buckets" => {
                    let b: Buckets = map.next_value()?;
                    self.index.add_buckets(&b, self.is_after);
                }
                "stacks" => {
                    stacks = map.next_value_seed(StacksSeed {
                        index: &mut *self.index,
                        is_after: self.is_after,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(stacks)
    }
}

struct StacksSeed<'a> {
    index: &'a mut DiffIndex,
    is_after: bool,
}

impl<'de> DeserializeSeed<'de> for StacksSeed<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for StacksSeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of stacks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(s) = seq.next_element::<StackReport>()? {
            self.index.add_stack(&s, self.is_after);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{diff, Bucket, Frame, ProcessReport, Report};

    fn report(pid: u32, addr: &str, live: u64) -> Report {
        let mut r = Report::new(Mode::Malloc);
        r.processes.push(ProcessReport {
            pid,
            comm: "node".into(),
            buckets: Buckets {
                native_addon: live,
                ..Buckets::default()
            },
            stacks: vec![StackReport {
                bucket: Some(Bucket::NativeAddon),
                live_bytes: live,
                frames: vec![Frame {
                    addr: addr.into(),
                    symbol: Some("leak".into()),
                    module: Some(format!("/proc/{pid}/root/app/a.node")),
                    ..Frame::default()
                }],
                ..StackReport::default()
            }],
            ..ProcessReport::default()
        });
        r
    }

    #[test]
    fn streaming_equals_the_in_memory_diff() {
        let (a, b) = (report(1, "0x10", 100), report(2, "0x20", 300));
        let want = diff::diff(&a, &b);
        let mut index = DiffIndex::default();
        let ja = serde_json::to_vec(&a).unwrap();
        let jb = serde_json::to_vec(&b).unwrap();
        let sa = read_into(&ja[..], &mut index, false).unwrap();
        let sb = read_into(&jb[..], &mut index, true).unwrap();
        assert_eq!(index.finish(), want);
        assert_eq!(want.stacks[0].delta_live_bytes, 200);
        assert_eq!(want.stacks[0].frames[0].addr, "0x20");
        assert_eq!(
            sa,
            Side {
                schema: "offheap.report.v1".into(),
                mode: Some(Mode::Malloc),
                processes: 1,
                stacks: 1,
            }
        );
        assert_eq!(sb.stacks, 1);
    }

    #[test]
    fn foreign_json_is_an_error() {
        let mut index = DiffIndex::default();
        assert!(read_into(&b"[1, 2]"[..], &mut index, false).is_err());
        assert!(read_into(&br#"{"processes": []}"#[..], &mut index, false).is_err());
        assert!(read_into(&br#"{"schema": "x"} trailing"#[..], &mut index, false).is_err());
    }
}
