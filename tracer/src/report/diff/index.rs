//! The stacks of two reports, matched by frame keys, in little memory: each
//! distinct frame and each distinct frame key is stored once, and a stack is
//! the ids of its frames (what it shows) and of its keys (what it matches
//! on). Two reports of 200 000 stacks of a few dozen frames share a few tens
//! of thousands of distinct frames.
use std::{collections::HashMap, sync::Arc};

use super::{delta, frame_key, BucketDeltas, BucketsDiff, DiffReport, DiffStack, SCHEMA};
use crate::report::{Bucket, Buckets, Frame, StackReport};

struct Entry {
    /// Ids into `frames`: BEFORE's frames, or AFTER's once it has the stack.
    frames: Box<[u32]>,
    bucket: Option<Bucket>,
    before: u64,
    after: u64,
}

/// Add both reports' stacks and buckets, then `finish`.
#[derive(Default)]
pub struct DiffIndex {
    frames: Vec<Arc<Frame>>,
    frame_ids: HashMap<Arc<Frame>, u32>,
    /// Key id of each frame id.
    frame_keys: Vec<u32>,
    key_ids: HashMap<String, u32>,
    stacks: HashMap<Box<[u32]>, u32>,
    entries: Vec<Entry>,
    buckets: BucketsDiff,
}

impl DiffIndex {
    fn frame_id(&mut self, f: &Frame) -> u32 {
        if let Some(&id) = self.frame_ids.get(f) {
            return id;
        }
        let id = self.frames.len() as u32;
        let key = frame_key(f);
        let next_key = self.key_ids.len() as u32;
        let key_id = *self.key_ids.entry(key).or_insert(next_key);
        let f = Arc::new(f.clone());
        self.frames.push(Arc::clone(&f));
        self.frame_ids.insert(f, id);
        self.frame_keys.push(key_id);
        id
    }

    pub fn add_buckets(&mut self, b: &Buckets, is_after: bool) {
        let side = if is_after {
            &mut self.buckets.after
        } else {
            &mut self.buckets.before
        };
        for bucket in Bucket::ALL {
            *side.get_mut(bucket) += b.get(bucket);
        }
    }

    pub fn add_stack(&mut self, s: &StackReport, is_after: bool) {
        let frames: Box<[u32]> = s.frames.iter().map(|f| self.frame_id(f)).collect();
        let key: Box<[u32]> = frames
            .iter()
            .map(|&id| self.frame_keys[id as usize])
            .collect();
        let next = self.entries.len() as u32;
        let i = *self.stacks.entry(key).or_insert(next) as usize;
        if i == self.entries.len() {
            self.entries.push(Entry {
                frames: frames.clone(),
                bucket: s.bucket,
                before: 0,
                after: 0,
            });
        }
        let e = &mut self.entries[i];
        if is_after {
            if e.after == 0 && e.before > 0 {
                // Show AFTER's addresses and bucket: the newer run.
                e.frames = frames;
                e.bucket = s.bucket;
            }
            e.after += s.live_bytes;
        } else {
            e.before += s.live_bytes;
        }
    }

    /// The diff, largest growth first.
    pub fn finish(self) -> DiffReport {
        let frames = self.frames;
        let mut stacks: Vec<DiffStack> = self
            .entries
            .into_iter()
            .map(|e| DiffStack {
                frames: e
                    .frames
                    .iter()
                    .map(|&id| Arc::clone(&frames[id as usize]))
                    .collect(),
                bucket: e.bucket,
                before_live_bytes: e.before,
                after_live_bytes: e.after,
                delta_live_bytes: delta(e.before, e.after),
            })
            .collect();
        stacks.sort_by(|a, b| {
            b.delta_live_bytes
                .cmp(&a.delta_live_bytes)
                .then(b.after_live_bytes.cmp(&a.after_live_bytes))
        });
        let mut buckets = self.buckets;
        let (bf, af) = (buckets.before, buckets.after);
        buckets.delta = BucketDeltas {
            v8_heap: delta(bf.v8_heap, af.v8_heap),
            array_buffers: delta(bf.array_buffers, af.array_buffers),
            native_addon: delta(bf.native_addon, af.native_addon),
            node_native: delta(bf.node_native, af.node_native),
            other: delta(bf.other, af.other),
        };
        DiffReport {
            schema: SCHEMA.to_string(),
            stacks,
            buckets,
        }
    }
}
