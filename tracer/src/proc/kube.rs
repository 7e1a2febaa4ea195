//! Kubernetes pod UID and container ID from a kubepods cgroup path, for both
//! kubelet cgroup drivers (systemd and cgroupfs) and cgroup v1 and v2 (the
//! paths are the same below the hierarchy's root).

/// A Kubernetes pod and container, from a kubepods cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// With dashes, as the API server shows it (the systemd driver writes `_`).
    pub pod_uid: String,
    /// `guaranteed`, `burstable` or `besteffort`.
    pub qos: String,
    /// The container runtime's id (64 hex digits), when the path reaches the container.
    pub container_id: Option<String>,
}

/// Parses kubelet cgroup paths for both drivers:
/// systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
/// (also `docker-<id>.scope`, `crio-<id>.scope`, guaranteed pods directly under kubepods.slice);
/// cgroupfs: `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>`.
/// The kubepods part may sit below a prefix (e.g. kind nodes, nested runtimes).
pub fn parse_kube_path(path: &str) -> Option<PodInfo> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let start = comps
        .iter()
        .position(|c| *c == "kubepods" || *c == "kubepods.slice")?;
    let mut qos = "guaranteed".to_string();
    let mut pod_uid = None;
    let mut container_id = None;
    for c in &comps[start + 1..] {
        if pod_uid.is_none() {
            if let Some(uid) = pod_component(c) {
                pod_uid = Some(uid);
            } else if let Some(q) = qos_component(c) {
                qos = q.to_string();
            } else {
                return None;
            }
        } else if container_id.is_none() {
            container_id = container_component(c);
        }
    }
    Some(PodInfo {
        pod_uid: pod_uid?,
        qos,
        container_id,
    })
}

fn qos_component(c: &str) -> Option<&'static str> {
    match c.trim_end_matches(".slice").trim_start_matches("kubepods-") {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

fn pod_component(c: &str) -> Option<String> {
    // systemd: kubepods[-qos]-pod<uid with _>.slice; cgroupfs: pod<uid>
    let raw = if let Some(s) = c.strip_suffix(".slice") {
        s.rsplit_once("-pod")?.1
    } else {
        c.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let ok = uid.len() == 36 && uid.chars().all(|ch| ch.is_ascii_hexdigit() || ch == '-');
    ok.then_some(uid)
}

fn container_component(c: &str) -> Option<String> {
    // systemd: <runtime>-<id>.scope (cri-containerd, docker, crio, ...); cgroupfs: <id>
    let id = match c.strip_suffix(".scope") {
        Some(s) => s.rsplit_once('-')?.1,
        None => c,
    };
    let ok = id.len() == 64 && id.chars().all(|ch| ch.is_ascii_hexdigit());
    ok.then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99";
    const UID_: &str = "0f5c1a3e_8d4b_4c6a_9e21_7b3f2d1c0a99";
    const CID: &str = "3b9f2c1d4e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

    fn pod(path: &str) -> Option<(String, String, Option<String>)> {
        parse_kube_path(path).map(|p| (p.pod_uid, p.qos, p.container_id))
    }

    #[test]
    fn kube_paths_systemd_driver() {
        for runtime in ["cri-containerd", "docker", "crio"] {
            let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{runtime}-{CID}.scope");
            assert_eq!(
                pod(&p),
                Some((UID.into(), "burstable".into(), Some(CID.into()))),
                "{p}"
            );
        }
        let p = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(
            pod(&p),
            Some((UID.into(), "besteffort".into(), Some(CID.into())))
        );
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(
            pod(&p),
            Some((UID.into(), "guaranteed".into(), Some(CID.into())))
        );
        // The pod slice itself (pod-level cgroup, no container yet).
        let p =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(pod(&p), Some((UID.into(), "burstable".into(), None)));
    }

    #[test]
    fn kube_paths_cgroupfs_driver() {
        assert_eq!(
            pod(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            Some((UID.into(), "burstable".into(), Some(CID.into())))
        );
        assert_eq!(
            pod(&format!("/kubepods/besteffort/pod{UID}/{CID}")),
            Some((UID.into(), "besteffort".into(), Some(CID.into())))
        );
        assert_eq!(
            pod(&format!("/kubepods/pod{UID}/{CID}")),
            Some((UID.into(), "guaranteed".into(), Some(CID.into())))
        );
        // Below a prefix, as on kind nodes (docker-in-docker).
        assert_eq!(
            pod(&format!("/docker/{CID}/kubepods/burstable/pod{UID}/{CID}")),
            Some((UID.into(), "burstable".into(), Some(CID.into())))
        );
    }

    #[test]
    fn non_kube_paths_are_none() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/containerd.service",
            "/kubepods.slice",
            "/kubepods/burstable",
            "/kubepods/burstable/podnot-a-uid/abc",
            &format!("/docker/{CID}"),
        ] {
            assert_eq!(pod(p), None, "{p}");
        }
    }
}
