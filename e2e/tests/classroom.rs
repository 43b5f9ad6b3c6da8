//! Classrooms (issue 16, points 2–5) on a one-node `lotse up`, driven by the real kubectl 1.33
//! and the `lotse classroom` commands: a 3-student class from one manifest; every student's
//! lab (a busybox httpd Deployment + Service) comes up; with each student's own kubeconfig a
//! student lists their own pods but not another student's (RBAC 403), cannot exec into another
//! student's pod, cannot bind `cluster-admin`, hits the quota, and a privileged pod is refused
//! by Pod Security; traffic within a student namespace flows while traffic to another student's
//! Service is blocked; `lotse classroom revoke` makes a kubeconfig fail with 401; removing a
//! student removes exactly their namespace; invalid Classrooms are refused at admission with
//! the apiserver's schema wording; deleting the Classroom removes the namespaces.
//!
//! Needs root, containerd, runc, nftables, the built binaries and the busybox and pause
//! images. About 60 s.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::Kubectl;
use e2e::lotse::{Node, random_pod_cidr, wait_for};

const NODE: &str = "classroom-node";

fn class(students: &[&str]) -> String {
    let list: String = students
        .iter()
        .map(|s| format!("    - name: {s}\n"))
        .collect();
    format!(
        r#"apiVersion: lotse.dev/v1alpha1
kind: Classroom
metadata:
  name: lab
spec:
  students:
{list}  budget:
    cpu: "1"
    memory: 512Mi
    pods: 3
    services: 2
  podSecurity: baseline
  labs:
    - |
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: web
      spec:
        replicas: 1
        selector:
          matchLabels: {{app: web}}
        template:
          metadata:
            labels: {{app: web}}
          spec:
            terminationGracePeriodSeconds: 1
            automountServiceAccountToken: false
            containers:
              - name: httpd
                image: busybox
                command: ["sh", "-c", "mkdir -p /www && echo 'lab of {{{{student}}}} in {{{{namespace}}}}' > /www/index.html && exec httpd -f -p 8080 -h /www"]
                readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
      ---
      apiVersion: v1
      kind: Service
      metadata:
        name: web
      spec:
        selector: {{app: web}}
        ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

fn bad(spec: &str) -> String {
    format!(
        "apiVersion: lotse.dev/v1alpha1\nkind: Classroom\nmetadata:\n  name: bad\nspec:\n{spec}"
    )
}

#[track_caller]
fn assert_has(text: &str, want: &str) {
    assert!(text.contains(want), "output lacks {want:?}:\n{text}");
}

fn lotse_classroom(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(e2e::bin_dir().join("lotse"))
        .arg("classroom")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()?;
    if !out.status.success() {
        bail!(
            "lotse classroom {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pod_manifest(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '3600']\n{extra}"
    )
}

#[test]
#[ignore = "needs root, containerd, runc, nftables, built binaries and images; run via .ci/test"]
fn classroom_isolation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        tmp.path(),
        NODE,
        &random_pod_cidr().expect("pod cidr"),
        &["busybox.tar", "pause.tar"],
    )
    .expect("start lotse up");
    let started = std::time::Instant::now();
    if let Err(e) = walk(&node, tmp.path()) {
        let k = &node.kubectl;
        let status = k
            .run(&["get", "classrooms", "-o", "yaml"])
            .map(|o| o.stdout + &o.stderr)
            .unwrap_or_default();
        let pods = k
            .run(&["get", "pods", "-A", "-o", "wide"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        panic!(
            "{e:#}\n--- classrooms ---\n{status}\n--- pods ---\n{pods}\n--- lotse log ---\n{}",
            node.lotse.log()
        );
    }
    eprintln!("classroom walk-through: {:?}", started.elapsed());
}

fn walk(node: &Node, tmp: &Path) -> anyhow::Result<()> {
    let k = &node.kubectl;
    // The controllers install the CRD at start.
    wait_for(
        k,
        &[
            "get",
            "crd",
            "classrooms.lotse.dev",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ],
        "Classroom CRD established",
        Duration::from_secs(30),
        |s| s == "True",
    )?;

    // Bad input is refused at admission, nothing is created.
    let dup = k
        .run_stdin(
            &["apply", "-f", "-"],
            &bad("  students: [{name: ann}, {name: ann}]\n"),
        )?
        .failure()?
        .stderr;
    assert_has(&dup, r#"The Classroom "bad" is invalid"#);
    assert_has(
        &dup,
        r#"spec.students[1]: Duplicate value: map[string]interface {}{"name":"ann"}"#,
    );
    let label = k
        .run_stdin(
            &["apply", "-f", "-"],
            &bad("  students: [{name: Not_A_Label}]\n"),
        )?
        .failure()?
        .stderr;
    assert_has(
        &label,
        "spec.students[0].name in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
    );
    let negative = k
        .run_stdin(
            &["apply", "-f", "-"],
            &bad("  students: [{name: ann}]\n  budget: {pods: -1}\n"),
        )?
        .failure()?
        .stderr;
    assert_has(
        &negative,
        "spec.budget.pods in body should be greater than or equal to 0",
    );
    let memory = k
        .run_stdin(
            &["apply", "-f", "-"],
            &bad("  students: [{name: ann}]\n  budget: {memory: -1Gi}\n"),
        )?
        .failure()?
        .stderr;
    assert_has(&memory, "spec.budget.memory in body should match");

    // A lab that does not parse passes the schema but is reported, and nothing is applied.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &bad("  students: [{name: ann}]\n  labs: [\"kind: [\"]\n"),
    )?;
    let message = wait_for(
        k,
        &[
            "get",
            "classroom",
            "bad",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Valid\")].message}",
        ],
        "the bad lab reported",
        Duration::from_secs(30),
        |s| !s.is_empty(),
    )?;
    assert_has(&message, "spec.labs[0]: the manifest does not parse");
    let none = k.ok(&["get", "ns", "-l", "lotse.dev/classroom=bad", "-o", "name"])?;
    assert_eq!(none.trim(), "", "a bad Classroom created namespaces");
    k.ok(&["delete", "classroom", "bad"])?;

    // One manifest, three students.
    k.ok_stdin(&["apply", "-f", "-"], &class(&["ann", "ben", "cat"]))?;
    wait_for(
        k,
        &["get", "classroom", "lab", "-o", "jsonpath={.status.ready}"],
        "3/3 students ready",
        Duration::from_secs(30),
        |s| s == "3/3",
    )?;
    let table = k.ok(&["get", "classrooms"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STUDENTS", "READY", "AGE"], "{table}");
    assert_has(&table, "lab    3          3/3");
    for s in ["ann", "ben", "cat"] {
        let ns = format!("lab-{s}");
        let labels = k.ok(&["get", "ns", &ns, "-o", "jsonpath={.metadata.labels}"])?;
        assert_has(&labels, r#""lotse.dev/classroom":"lab""#);
        assert_has(&labels, &format!(r#""lotse.dev/student":"{s}""#));
        assert_has(
            &labels,
            r#""pod-security.kubernetes.io/enforce":"baseline""#,
        );
        let hard = k.ok(&[
            "get",
            "resourcequota",
            "budget",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.hard.pods}",
        ])?;
        assert_eq!(hard, "3");
        wait_for(
            k,
            &[
                "get",
                "deployment",
                "web",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.availableReplicas}",
            ],
            &format!("{ns}'s lab available"),
            Duration::from_secs(60),
            |s| s == "1",
        )?;
    }

    // Each student's kubeconfig.
    let out = tmp.join("kubeconfigs");
    let written = lotse_classroom(
        &node.data,
        &[
            "kubeconfigs",
            "lab",
            "--out",
            &out.to_string_lossy(),
            "--duration",
            "1h",
        ],
    )?;
    assert_has(&written, "ann.kubeconfig");
    let student = |s: &str| {
        Kubectl::new(
            33,
            out.join(format!("{s}.kubeconfig")),
            tmp.join(format!("kubectl-cache-{s}")),
        )
    };
    let (ann, cat) = (student("ann"), student("cat"));
    let own = ann.ok(&["get", "pods", "-o", "name"])?;
    assert_has(&own, "pod/web-");
    let denied = ann.fails(&["get", "pods", "-n", "lab-ben"])?;
    assert_has(
        &denied,
        r#"pods is forbidden: User "system:serviceaccount:lab-ann:student" cannot list resource "pods" in API group "" in the namespace "lab-ben""#,
    );
    let ben_pod = k.ok(&[
        "get",
        "pods",
        "-n",
        "lab-ben",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    let exec = ann.fails(&["exec", "-n", "lab-ben", &ben_pod, "--", "true"])?;
    // kubectl reads the pod before it execs: that is refused already.
    assert_has(
        &exec,
        &format!(
            r#"pods "{ben_pod}" is forbidden: User "system:serviceaccount:lab-ann:student" cannot get resource "pods" in API group "" in the namespace "lab-ben""#
        ),
    );
    let escalate = ann.fails(&[
        "create",
        "rolebinding",
        "pwn",
        "--clusterrole=cluster-admin",
        "--serviceaccount=lab-ann:student",
    ])?;
    assert_has(
        &escalate,
        r#"rolebindings.rbac.authorization.k8s.io is forbidden: User "system:serviceaccount:lab-ann:student" cannot create resource "rolebindings" in API group "rbac.authorization.k8s.io" in the namespace "lab-ann""#,
    );
    let over = ann
        .run_stdin(
            &["apply", "-f", "-"],
            &pod_manifest(
                "big",
                "    resources: {limits: {memory: 2Gi}, requests: {memory: 64Mi}}\n",
            ),
        )?
        .failure()?
        .stderr;
    assert_has(&over, r#"pods "big" is forbidden: exceeded quota: budget"#);
    let privileged = ann
        .run_stdin(
            &["apply", "-f", "-"],
            &pod_manifest("root", "    securityContext: {privileged: true}\n"),
        )?
        .failure()?
        .stderr;
    assert_has(
        &privileged,
        r#"pods "root" is forbidden: violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#,
    );

    // Traffic: ann's client reaches her own lab, not ben's.
    ann.ok_stdin(&["apply", "-f", "-"], &pod_manifest("client", ""))?;
    ann.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ])?;
    let ip = |ns: &str| {
        k.ok(&[
            "get",
            "svc",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
    };
    let (own_ip, ben_ip) = (ip("lab-ann")?, ip("lab-ben")?);
    // busybox 1.35's `wget -T` segfaults: the `timeout` applet bounds it.
    let fetch = |target: &str| {
        ann.run(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("timeout 2 wget -q -O- http://{target}/"),
        ])
    };
    let mut page = String::new();
    for _ in 0..20 {
        let o = fetch(&own_ip)?;
        if o.code == 0 {
            page = o.stdout;
            break;
        }
        page = format!("{}{}", o.stdout, o.stderr);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_has(&page, "lab of ann in lab-ann");
    let blocked = fetch(&ben_ip)?;
    assert_ne!(
        blocked.code, 0,
        "ann reached ben's lab: {}{}",
        blocked.stdout, blocked.stderr
    );

    // Revoking cat's credentials: 401 at once.
    cat.ok(&["get", "pods"])?;
    lotse_classroom(&node.data, &["revoke", "lab", "cat"])?;
    let unauthorized = cat.fails(&["get", "pods"])?;
    assert_has(
        &unauthorized,
        "error: You must be logged in to the server (Unauthorized)",
    );
    ann.ok(&["get", "pods"])?;

    // Removing cat removes exactly lab-cat; the budget edit updates the quotas in place.
    let quota_uid = |ns: &str| {
        k.ok(&[
            "get",
            "resourcequota",
            "budget",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let ann_quota = quota_uid("lab-ann")?;
    k.ok_stdin(
        &["apply", "-f", "-"],
        &class(&["ann", "ben"]).replace("pods: 3", "pods: 4"),
    )?;
    wait_for(
        k,
        &[
            "get",
            "resourcequota",
            "budget",
            "-n",
            "lab-ann",
            "-o",
            "jsonpath={.spec.hard.pods}",
        ],
        "lab-ann's quota raised to 4 pods",
        Duration::from_secs(30),
        |s| s == "4",
    )?;
    assert_eq!(quota_uid("lab-ann")?, ann_quota, "the quota was replaced");
    wait_for(
        k,
        &["get", "ns", "-l", "lotse.dev/classroom=lab", "-o", "name"],
        "lab-cat gone",
        Duration::from_secs(60),
        |s| !s.contains("lab-cat"),
    )?;
    let left = k.ok(&["get", "ns", "-l", "lotse.dev/classroom=lab", "-o", "name"])?;
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["namespace/lab-ann", "namespace/lab-ben"],
        "{left}"
    );
    wait_for(
        k,
        &["get", "classroom", "lab", "-o", "jsonpath={.status.ready}"],
        "2/2 students ready",
        Duration::from_secs(30),
        |s| s == "2/2",
    )?;
    ann.ok(&["get", "pod", "client"])
        .context("ann's pod survived the removal of cat")?;

    // Deleting the Classroom lets the garbage collector remove the namespaces.
    k.ok(&["delete", "classroom", "lab", "--wait=false"])?;
    wait_for(
        k,
        &[
            "get",
            "ns",
            "-l",
            "lotse.dev/classroom=lab",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
        ],
        "the namespaces terminating or gone",
        Duration::from_secs(30),
        |s| s.split_whitespace().all(|p| p.ends_with("=Terminating")),
    )?;
    Ok(())
}
