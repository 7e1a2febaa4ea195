# The offheap node agent image (see deploy/daemonset.yaml).
#   docker build -t offheap:0.1.0 .
#
# Stage 1 builds the binary: clang-19 compiles the BPF object (tracer/build.rs)
# that is embedded into it. Stage 2 is only the binary: it links nothing but
# glibc, and reads BTF from the host at run time.
FROM rust:1.95-bookworm AS build
# Versions come from the Debian release the image is pinned to.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang-19 llvm-19 libbpf-dev linux-libc-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tracer \
    && cp target/release/offheap /offheap

FROM debian:bookworm-slim
COPY --from=build /offheap /usr/local/bin/offheap
# Root is required: loading BPF programs needs CAP_BPF/CAP_SYS_ADMIN, which the
# DaemonSet grants with `privileged: true`.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/offheap"]
CMD ["watch", "--all-node", "--oom-dir", "/var/lib/offheap", "--listen", "0.0.0.0:9464"]
