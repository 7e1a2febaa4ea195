// Independent check of offheap's pprof output: decodes a gzipped profile with
// Datadog's `pprof-format` (npm) and prints what the Rust test compares with
// the JSON report. Usage: node decode.cjs PROFILE.pb.gz (NODE_PATH points to
// the node_modules holding pprof-format).
'use strict';
const fs = require('fs');
const zlib = require('zlib');
const { Profile } = require('pprof-format');

const p = Profile.decode(zlib.gunzipSync(fs.readFileSync(process.argv[2])));
const str = (i) => p.stringTable.strings[Number(i)];
const fn = new Map(p.function.map((f) => [Number(f.id), f]));
const loc = new Map(p.location.map((l) => [Number(l.id), l]));
const key = (name) => p.sampleType.findIndex((t) => str(t.type) === name);

const out = {
  sampleTypes: p.sampleType.map((t) => `${str(t.type)}/${str(t.unit)}`),
  defaultSampleType: str(p.defaultSampleType),
  totals: p.sampleType.map(() => 0),
  byBucket: {},
  pids: [],
  stacks: {},
  functions: p.function.map((f) => ({ name: str(f.name), filename: str(f.filename) })),
  mappings: p.mapping.map((m) => ({ filename: str(m.filename), buildId: str(m.buildId) })),
};
for (const s of p.sample) {
  s.value.forEach((v, i) => { out.totals[i] += Number(v); });
  let bucket = null;
  for (const l of s.label) {
    if (str(l.key) === 'bucket') bucket = str(l.str);
    if (str(l.key) === 'pid' && !out.pids.includes(Number(l.num))) out.pids.push(Number(l.num));
  }
  out.byBucket[bucket] = (out.byBucket[bucket] || 0) + Number(s.value[key('inuse_space')]);
  // pprof lists locations leaf first, and a location's lines inlined-first;
  // folded stacks go root first.
  const names = s.locationId.flatMap((id) =>
    loc.get(Number(id)).line.map((l) => str(fn.get(Number(l.functionId)).name)));
  const stack = names.reverse().join(';');
  out.stacks[stack] = (out.stacks[stack] || 0) + Number(s.value[key('inuse_space')]);
}
process.stdout.write(JSON.stringify(out));
