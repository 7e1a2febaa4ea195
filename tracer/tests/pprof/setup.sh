#!/bin/sh
# Installs the two independent pprof readers that tests/report_formats.rs
# checks offheap's pprof output with. The tests build/install what they can
# themselves; this only brings the system packages (run as root, once).
#  - Google's pprof (the reference consumer), built from Debian's source
#    package with Debian's Go: apt golang-go golang-github-google-pprof-dev.
#  - npm pprof-format 2.3.2 (Datadog's pure-JS decoder): the test installs it
#    with npm into target/tmp on first run.
set -eu
apt-get update -qq
apt-get install -y -qq golang-go golang-github-google-pprof-dev
