//! `lotse down` and `lotse reset` on a real one-node cluster (containerd, runc, the real kubectl):
//! down stops every pod (running its preStop hook within the grace period) and the control plane
//! and keeps the data, so a second `lotse up` resumes the same pods; reset removes the pods, the
//! mounts, the data dir and (when no other cluster runs here) the node bridge.
//!
//! Needs root, containerd, runc and the busybox + pause archives (`target/debug/lotse images
//! build --output target/lotse-images busybox pause`) and the binaries
//! (`cargo build -p lotse -p kubelet -p cni-plugin --bins`).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::bin_dir;
use e2e::lotse::{Lotse, Node, random_pod_cidr, wait_for};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: stopper
spec:
  terminationGracePeriodSeconds: 20
  volumes:
    - name: out
      hostPath:
        path: HOSTDIR
        type: DirectoryOrCreate
  containers:
    - name: main
      image: busybox
      imagePullPolicy: Never
      command: ["sh", "-c", "trap 'echo term >> /out/log; exit 0' TERM; while true; do sleep 1; done"]
      volumeMounts:
        - name: out
          mountPath: /out
      lifecycle:
        preStop:
          exec:
            command: ["sh", "-c", "echo prestop >> /out/log"]
"#;

/// Pids of processes in the cgroups of pod `uid` (any hierarchy).
fn processes_of_pod(uid: &str) -> Vec<u32> {
    let needle = format!("kubepods/pod{uid}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_str()?.parse::<u32>().ok()?;
            let cg = std::fs::read_to_string(p.path().join("cgroup")).ok()?;
            cg.contains(&needle).then_some(pid)
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&d))
        .map(str::to_string)
        .collect()
}

fn run_lotse(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(bin_dir().join("lotse"))
        .args(args)
        .output()
        .context("running lotse")
}

fn other_lotse_up_running(except: u32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != except)
        .any(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let a: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            a.first().is_some_and(|a0| a0.ends_with(b"lotse")) && a.get(1) == Some(&&b"up"[..])
        })
}

#[test]
#[ignore = "needs root, containerd, runc and the busybox/pause image archives"]
fn down_keeps_the_data_and_reset_leaves_no_trace() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let hostdir = tmp.path().join("out");
    let node = Node::start(
        tmp.path(),
        "down-node",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let Node {
        mut lotse,
        kubectl: k,
        data,
        args,
        ..
    } = node;
    k.ok_stdin(
        &["apply", "-f", "-"],
        &POD.replace("HOSTDIR", &hostdir.to_string_lossy()),
    )?;
    wait_for(
        &k,
        &["get", "pod", "stopper", "-o", "jsonpath={.status.phase}"],
        "pod Running",
        Duration::from_secs(60),
        |s| s == "Running",
    )
    .with_context(|| lotse.log())?;
    let uid = k.ok(&["get", "pod", "stopper", "-o", "jsonpath={.metadata.uid}"])?;
    let started = k.ok(&[
        "get",
        "pod",
        "stopper",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.running.startedAt}",
    ])?;
    assert!(!processes_of_pod(&uid).is_empty(), "the pod runs processes");

    // lotse images import: an archive under a name of the user's choice, usable at once.
    let data_s = data.to_string_lossy().into_owned();
    let busybox = e2e::lotse::images_dir().join("busybox.tar");
    let out = run_lotse(&[
        "images",
        "import",
        "--data-dir",
        &data_s,
        "--name",
        "myapp:1.0",
        &busybox.to_string_lossy(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_lotse(&["images", "list", "--data-dir", &data_s])?;
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..2]
                == ["docker.io/library/myapp", "1.0"]),
        "{list}"
    );
    k.ok(&[
        "run",
        "myapp",
        "--image=myapp:1.0",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sleep",
        "3600",
    ])?;
    wait_for(
        &k,
        &["get", "pod", "myapp", "-o", "jsonpath={.status.phase}"],
        "the imported image runs",
        Duration::from_secs(60),
        |s| s == "Running",
    )?;
    k.ok(&["delete", "pod", "myapp", "--grace-period=1", "--wait=true"])?;
    // A file that is no image archive is refused with a clear message.
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, b"no archive")?;
    let out = run_lotse(&[
        "images",
        "import",
        "--data-dir",
        &data_s,
        &junk.to_string_lossy(),
    ])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a tar archive")
            || String::from_utf8_lossy(&out.stderr).contains("neither an OCI"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // lotse down: the preStop hook runs, then SIGTERM reaches the container (its trap writes
    // "term"), lotse up exits, and no process of the pod is left.
    let out = run_lotse(&["down", "--data-dir", &data_s])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lotse down failed: {stderr}");
    assert!(
        stderr.contains("stopped ") && stderr.contains(" pod(s), 1 container(s)"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(hostdir.join("log")).unwrap_or_default();
    assert_eq!(log, "prestop\nterm\n", "preStop hook, then SIGTERM");
    // Exited: gone, or a zombie until this test reaps it.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", lotse.pid())).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "lotse up has exited: {stat}"
    );
    assert_eq!(
        processes_of_pod(&uid),
        Vec::<u32>::new(),
        "no process of the pod runs"
    );
    assert!(data.join("admin.kubeconfig").is_file(), "the data stays");
    let _ = lotse.stop(); // reaps the exited child

    // lotse up again: the same cluster, the same pod; its sandbox and container, stopped by
    // `down`, are started again by the kubelet, as after a node reboot.
    // This time with automatic backups every second, two kept (k3s's scheduled snapshots).
    let mut with_backups = args.clone();
    with_backups
        .extend(["--backup-schedule", "@every 1s", "--backup-retention", "2"].map(String::from));
    let mut lotse = Lotse::start(&data, &with_backups)?;
    let again = wait_for(
        &k,
        &[
            "get",
            "pod",
            "stopper",
            "-o",
            "jsonpath={.metadata.uid} {.status.containerStatuses[0].state.running.startedAt}",
        ],
        "the pod running again after lotse up",
        Duration::from_secs(90),
        |s| {
            s.split(' ')
                .nth(1)
                .is_some_and(|t| !t.is_empty() && t != started)
        },
    )
    .with_context(|| lotse.log())?;
    assert!(again.starts_with(&uid), "{again}");
    assert!(!processes_of_pod(&uid).is_empty(), "the pod runs again");
    // The automatic backups: at least three taken by now, the two newest kept, each a backup
    // `lotse restore` accepts.
    // A backup is written every second: a listing may meet one being written (its temporary
    // directory beside the finished files) or one finished a moment before the oldest goes, so
    // the finished files are listed again until the retention holds.
    std::thread::sleep(Duration::from_secs(3));
    let mut backups: Vec<std::path::PathBuf> = Vec::new();
    for _ in 0..20 {
        backups = std::fs::read_dir(data.join("backups"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        backups.sort();
        if backups.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(backups.len(), 2, "retention 2: {backups:?}");
    assert!(
        backups
            .iter()
            .all(|b| b.file_name().and_then(|n| n.to_str()).is_some_and(|n| n
                .starts_with("lotse-backup-down-node-")
                && n.ends_with(".tar.gz"))),
        "{backups:?}"
    );
    let restored = tmp.path().join("restored");
    let out = run_lotse(&[
        "restore",
        "--data-dir",
        &restored.to_string_lossy(),
        &backups[1].to_string_lossy(),
    ])?;
    assert!(
        out.status.success(),
        "lotse restore of an automatic backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(restored.join("state.db").is_file());

    // lotse reset without --yes removes nothing.
    let out = run_lotse(&["reset", "--data-dir", &data_s])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("admin.kubeconfig").is_file());

    // lotse reset --yes: no process, no mount, no data dir; the bridge goes when no other
    // cluster runs on this machine.
    let pid = lotse.pid();
    let out = run_lotse(&["reset", "--yes", "--data-dir", &data_s])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lotse reset failed: {stderr}");
    let _ = lotse.stop();
    assert_eq!(processes_of_pod(&uid), Vec::<u32>::new());
    assert_eq!(mounts_under(&data), Vec::<String>::new(), "mounts left");
    assert!(!data.exists(), "data dir left");
    if !other_lotse_up_running(pid) {
        assert!(
            !Path::new("/sys/class/net/lotse0").exists(),
            "bridge lotse0 left"
        );
        // The node network agent's nftables table goes too (nft from Debian's nftables).
        if let Ok(out) = Command::new("nft").args(["list", "tables"]).output() {
            let tables = String::from_utf8_lossy(&out.stdout);
            assert!(
                !tables.lines().any(|l| l.trim() == "table ip lotse"),
                "nftables table left: {tables}"
            );
        }
    }
    let shims = Command::new("pgrep")
        .args(["-f", &format!("containerd-shim.*{data_s}")])
        .output()?;
    if !shims.stdout.is_empty() {
        bail!(
            "containerd shims left: {}",
            String::from_utf8_lossy(&shims.stdout)
        );
    }
    // A second lotse up on the same path starts a new, empty cluster.
    std::fs::create_dir_all(data.join("kubelet/images"))?;
    for img in ["busybox.tar", "pause.tar"] {
        std::fs::copy(
            e2e::lotse::images_dir().join(img),
            data.join("kubelet/images").join(img),
        )?;
    }
    let _lotse = Lotse::start(&data, &args)?;
    wait_for(
        &k,
        &e2e::lotse::node_ready_args("down-node"),
        "node Ready in the new cluster",
        Duration::from_secs(30),
        |s| s.trim() == "True",
    )?;
    let pods = k.ok(&["get", "pods", "-A", "-o", "name"])?;
    assert!(
        !pods.contains("stopper"),
        "the new cluster is empty: {pods}"
    );
    Ok(())
}
