//! Classrooms (issue 16, points 2–5) on a one-node `lotse up`, driven by the real kubectl 1.33
//! and the `lotse classroom` commands: a 3-student class from one manifest; every student's
//! lab (a busybox httpd Deployment + Service) comes up; with each student's own kubeconfig a
//! student lists their own pods but not another student's (RBAC 403), cannot exec into another
//! student's pod, cannot bind `cluster-admin`, hits the quota, and a privileged pod is refused
//! by Pod Security; traffic within a student namespace flows while traffic to another student's
//! Service is blocked; `lotse classroom revoke` makes a kubeconfig fail with 401; removing a
//! student removes exactly their namespace; invalid Classrooms are refused at admission with
//! the apiserver's schema wording; deleting the Classroom removes the namespaces.
//! `lotse classroom kubeconfigs --secret` stores the kubeconfigs in a Secret of the teacher's
//! namespace that a student's kubeconfig cannot read (403). A second Classroom's PostgreSQL lab
//! (StatefulSet with a claim, Service `db`): each of its 2 students reaches their own database
//! by Service name with psql from a pod of their own, and not the classmate's (NetworkPolicy).
//!
//! Needs root, containerd, runc, nftables, the built binaries and the busybox, pause and
//! postgres images. About 45 s (30 s of walk-through, 5 s of it the PostgreSQL checks).
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
  teacherNamespace: teacher
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

/// A class of two whose lab is a PostgreSQL StatefulSet (its own claim) behind the Service `db`;
/// each student's database user is their name.
const DB_CLASS: &str = r#"apiVersion: lotse.dev/v1alpha1
kind: Classroom
metadata:
  name: db
spec:
  students: [{name: ann}, {name: ben}]
  budget: {pods: 3, persistentvolumeclaims: 1, storage: 1Gi}
  podSecurity: baseline
  labs:
    - |
      apiVersion: v1
      kind: Service
      metadata: {name: db}
      spec:
        selector: {app: db}
        ports: [{port: 5432}]
      ---
      apiVersion: apps/v1
      kind: StatefulSet
      metadata: {name: db}
      spec:
        serviceName: db
        replicas: 1
        selector: {matchLabels: {app: db}}
        template:
          metadata: {labels: {app: db}}
          spec:
            terminationGracePeriodSeconds: 1
            automountServiceAccountToken: false
            securityContext: {runAsUser: 999, fsGroup: 999}
            containers:
            - name: postgres
              image: postgres:15
              env:
              - {name: POSTGRES_USER, value: "{{student}}"}
              - {name: POSTGRES_DB, value: lab}
              - {name: POSTGRES_PASSWORD, value: s3cret}
              - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
              resources: {requests: {memory: 64Mi}, limits: {memory: 512Mi}}
              readinessProbe:
                exec: {command: [pg_isready, -h, 127.0.0.1, -U, "{{student}}", -d, lab]}
                periodSeconds: 1
              volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
        volumeClaimTemplates:
        - metadata: {name: data}
          spec:
            accessModes: [ReadWriteOnce]
            resources: {requests: {storage: 256Mi}}
"#;

/// The psql client a student runs in their own namespace.
const PSQL_CLIENT: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: psql}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: psql
    image: postgres:15
    command: [sleep, "3600"]
    env:
    - {name: PGPASSWORD, value: s3cret}
    - {name: PGCONNECT_TIMEOUT, value: "3"}
"#;

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
    let starting = std::time::Instant::now();
    // Students reach their database by the Service's name: the cluster DNS runs.
    let node = Node::start_with_dns(
        tmp.path(),
        NODE,
        &random_pod_cidr().expect("pod cidr"),
        &["busybox.tar", "pause.tar"],
    )
    .expect("start lotse up");
    eprintln!("node up: {:?}", starting.elapsed());
    // The postgres archive is large (12–15 s to import): it goes into the running node's
    // containerd while the first class is built.
    let images = e2e::lotse::require_images(&["postgres.tar"]).expect("postgres image");
    let import = Command::new(e2e::bin_dir().join("lotse"))
        .args(["images", "import", "--data-dir"])
        .arg(&node.data)
        .arg(images.join("postgres.tar"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("lotse images import");
    let started = std::time::Instant::now();
    if let Err(e) = walk(&node, tmp.path(), import) {
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
    let stopping = std::time::Instant::now();
    drop(node);
    eprintln!("lotse stopped: {:?}", stopping.elapsed());
}

fn walk(node: &Node, tmp: &Path, mut import: std::process::Child) -> anyhow::Result<()> {
    let k = &node.kubectl;
    k.ok(&["create", "namespace", "teacher"])?;
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

    // The PostgreSQL class starts now; it is checked at the end.
    anyhow::ensure!(import.wait()?.success(), "lotse images import failed");
    k.ok_stdin(&["apply", "-f", "-"], DB_CLASS)?;

    // Each student's kubeconfig, in files and in the teacher's Secret.
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
            "--secret",
        ],
    )?;
    assert_has(&written, "ann.kubeconfig");
    assert_has(&written, "secret/lab-kubeconfigs -n teacher");
    let stored = k.ok(&[
        "get",
        "secret",
        "lab-kubeconfigs",
        "-n",
        "teacher",
        "-o",
        "jsonpath={.type} {.data}",
    ])?;
    assert!(stored.starts_with("Opaque "), "{stored}");
    for s in ["ann", "ben", "cat"] {
        assert_has(&stored, &format!(r#""{s}.kubeconfig":"#));
    }
    // ben's kubeconfig from the Secret works as the file does.
    let ben_b64 = k.ok(&[
        "get",
        "secret",
        "lab-kubeconfigs",
        "-n",
        "teacher",
        "-o",
        "jsonpath={.data.ben\\.kubeconfig}",
    ])?;
    let ben_yaml =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ben_b64.trim())?;
    std::fs::write(tmp.join("ben-from-secret.kubeconfig"), ben_yaml)?;
    let ben = Kubectl::new(
        33,
        tmp.join("ben-from-secret.kubeconfig"),
        tmp.join("kubectl-cache-ben"),
    );
    assert_has(&ben.ok(&["get", "pods", "-o", "name"])?, "pod/web-");
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
    let secret = ann.fails(&["get", "secret", "lab-kubeconfigs", "-n", "teacher"])?;
    assert_has(
        &secret,
        r#"Error from server (Forbidden): secrets "lab-kubeconfigs" is forbidden: User "system:serviceaccount:lab-ann:student" cannot get resource "secrets" in API group "" in the namespace "teacher""#,
    );
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

    let db_started = std::time::Instant::now();
    db_lab(node, tmp)?;
    eprintln!("PostgreSQL lab checks: {:?}", db_started.elapsed());

    // Deleting the Classrooms lets the garbage collector remove the namespaces.
    k.ok(&["delete", "classroom", "lab", "db", "--wait=false"])?;
    wait_for(
        k,
        &[
            "get",
            "ns",
            "-l",
            "lotse.dev/classroom in (lab,db)",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
        ],
        "the namespaces terminating or gone",
        Duration::from_secs(30),
        |s| s.split_whitespace().all(|p| p.ends_with("=Terminating")),
    )?;
    Ok(())
}

/// The PostgreSQL class (applied earlier): each student reaches their own database by Service
/// name from a pod of their own, and not the classmate's.
fn db_lab(node: &Node, tmp: &Path) -> anyhow::Result<()> {
    let k = &node.kubectl;
    let out = tmp.join("db-kubeconfigs");
    lotse_classroom(
        &node.data,
        &["kubeconfigs", "db", "--out", &out.to_string_lossy()],
    )?;
    let student = |s: &str| {
        Kubectl::new(
            33,
            out.join(format!("{s}.kubeconfig")),
            tmp.join(format!("kubectl-cache-db-{s}")),
        )
    };
    let students = [("ann", student("ann")), ("ben", student("ben"))];
    for (_, kc) in &students {
        kc.ok_stdin(&["apply", "-f", "-"], PSQL_CLIENT)?;
    }
    for (s, kc) in &students {
        wait_for(
            k,
            &[
                "get",
                "statefulset",
                "db",
                "-n",
                &format!("db-{s}"),
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
            &format!("db-{s}'s database ready"),
            Duration::from_secs(90),
            |r| r == "1",
        )?;
        kc.ok(&["wait", "--for=condition=Ready", "pod/psql", "--timeout=60s"])?;
    }
    let psql = |kc: &Kubectl, host: &str, user: &str| {
        kc.run(&[
            "exec",
            "psql",
            "--",
            "psql",
            "-h",
            host,
            "-U",
            user,
            "-d",
            "lab",
            "-tAc",
            "SELECT current_user || '@' || current_database()",
        ])
    };
    for (s, kc) in &students {
        let mut got = String::new();
        for _ in 0..20 {
            let o = psql(kc, "db", s)?;
            got = format!("{}{}", o.stdout, o.stderr);
            if o.code == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(
            got.trim(),
            format!("{s}@lab"),
            "{s} reaching their database"
        );
    }
    let (_, ann) = &students[0];
    let blocked = psql(ann, "db.db-ben", "ben")?;
    assert_ne!(
        blocked.code, 0,
        "ann reached ben's database: {}{}",
        blocked.stdout, blocked.stderr
    );
    assert_has(&blocked.stderr, "psql: error: connection to server at");
    Ok(())
}
