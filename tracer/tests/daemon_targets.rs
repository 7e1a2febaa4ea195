//! Target selection over the real /proc and a real memory cgroup.
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use offheap::daemon::{
    cgroup::{memory_cgroup_of, Mounts},
    targets::{proc_info, Selector},
};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` and waits until it has exec'd (its /proc exe is `exe_name`).
fn start(cmd: &mut Command, exe_name: &str) -> Kill {
    let c = Kill(cmd.stdin(Stdio::null()).spawn().unwrap());
    let exe = PathBuf::from(format!("/proc/{}/exe", c.0.id()));
    while !fs::read_link(&exe)
        .map(|p| p.ends_with(exe_name))
        .unwrap_or(false)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    c
}

#[test]
fn all_node_comm_and_cgroup_selection() {
    let mounts = Mounts::of_this_host().unwrap();
    let node = start(
        Command::new("/usr/bin/node").args(["-e", "setTimeout(() => {}, 600000)"]),
        "node",
    );
    let sleep = start(Command::new("sleep").arg("600"), "sleep");
    let (node_pid, sleep_pid) = (node.0.id(), sleep.0.id());

    let pids = |s: &Selector| -> Vec<u32> { s.scan(&mounts).iter().map(|p| p.pid).collect() };

    let all_node = Selector {
        all_node: true,
        ..Selector::default()
    };
    let found = pids(&all_node);
    assert!(found.contains(&node_pid), "{found:?}");
    assert!(!found.contains(&sleep_pid));

    let by_comm = Selector {
        comms: vec!["sleep".into()],
        ..Selector::default()
    };
    let found = pids(&by_comm);
    assert!(
        found.contains(&sleep_pid) && !found.contains(&node_pid),
        "{found:?}"
    );

    // A child memory cgroup holding only the sleep process.
    let own = memory_cgroup_of(std::process::id(), &mounts).unwrap();
    let dir = own
        .dir
        .join(format!("offheap-targets-{}", std::process::id()));
    fs::create_dir(&dir).unwrap();
    struct Rm(PathBuf, PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            // Move anything left back to the parent, then remove the cgroup.
            for p in fs::read_to_string(self.0.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _ = fs::write(self.1.join("cgroup.procs"), p);
            }
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(dir.clone(), own.dir.clone());
    fs::write(dir.join("cgroup.procs"), sleep_pid.to_string()).unwrap();
    let info = proc_info(sleep_pid, &mounts).unwrap();
    assert!(info.cgroup_dirs.contains(&dir), "{info:?}");

    let by_cgroup = Selector {
        cgroups: vec![dir.clone()],
        ..Selector::default()
    };
    assert_eq!(pids(&by_cgroup), vec![sleep_pid]);

    // The union of all three.
    let union = Selector {
        cgroups: vec![dir.clone()],
        comms: vec![],
        all_node: true,
    };
    let found = pids(&union);
    assert!(
        found.contains(&node_pid) && found.contains(&sleep_pid),
        "{found:?}"
    );
    drop(sleep);
    drop(node);
}
