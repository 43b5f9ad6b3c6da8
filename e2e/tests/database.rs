//! Databases on a real containerd, driven through `lotse up` and the real kubectl 1.33, with the
//! images `lotse images build postgres mariadb` makes from Debian's packages:
//! - PostgreSQL 15 as a StatefulSet with a local-path claim, running as UID 999 with
//!   `fsGroup: 999` (the Docker Hub image's way): `POSTGRES_USER`/`POSTGRES_DB`/`PGDATA` and the
//!   `/docker-entrypoint-initdb.d` scripts (`.sql`, `.sh`) make the database on first start;
//!   password auth over TCP; rows written with psql survive deleting the pod, scaling to 0 and
//!   back, and `kill -9` of `lotse up` and its restart; the claim is Bound to a local-path
//!   volume on the pod's node.
//! - `postgres:latest` with the image's defaults (no volume, no init scripts), started as root:
//!   the entrypoint makes the database and drops to UID 999.
//! - MariaDB 10.11 as a Deployment with a claim, started as root (the entrypoint owns the data
//!   directory to UID 999 and drops to it): `MARIADB_ROOT_PASSWORD`, the `MYSQL_DATABASE`
//!   alias, `MARIADB_USER`/`MARIADB_PASSWORD` and an init script; a row written survives the
//!   pod's replacement.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause postgres mariadb`.
use std::time::Duration;

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Lotse, Node, random_pod_cidr, wait_api_back, wait_for};

const LONG: Duration = Duration::from_secs(120);

const POSTGRES: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: pg-init}
data:
  01-schema.sql: |
    CREATE TABLE rows (id serial PRIMARY KEY, v text NOT NULL);
    INSERT INTO rows (v) VALUES ('from-initdb-sql');
  02-more.sh: |
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "INSERT INTO rows (v) VALUES ('from-initdb-sh')"
---
apiVersion: v1
kind: Service
metadata: {name: pg}
spec:
  selector: {app: pg}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: pg}
spec:
  serviceName: pg
  replicas: 1
  selector: {matchLabels: {app: pg}}
  template:
    metadata: {labels: {app: pg}}
    spec:
      terminationGracePeriodSeconds: 10
      securityContext: {runAsUser: 999, fsGroup: 999}
      containers:
      - name: postgres
        image: postgres:15
        env:
        - {name: POSTGRES_USER, value: lab}
        - {name: POSTGRES_DB, value: labdb}
        - {name: POSTGRES_PASSWORD, value: s3cret}
        - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
        readinessProbe:
          exec: {command: [pg_isready, -h, 127.0.0.1, -U, lab, -d, labdb]}
          periodSeconds: 1
        volumeMounts:
        - {name: data, mountPath: /var/lib/postgresql/data}
        - {name: init, mountPath: /docker-entrypoint-initdb.d}
      volumes:
      - {name: init, configMap: {name: pg-init}}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: local-path
      resources: {requests: {storage: 1Gi}}
"#;

const MARIADB: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: maria-init}
data:
  schema.sql: |
    CREATE TABLE items (id int AUTO_INCREMENT PRIMARY KEY, v varchar(64) NOT NULL);
  seed.sh: |
    mariadb -uroot shop -e "INSERT INTO items (v) VALUES ('from-initdb-sh')"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: maria}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: maria}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: maria}}
  template:
    metadata: {labels: {app: maria}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: mariadb
        image: mariadb:10.11
        env:
        - {name: MARIADB_ROOT_PASSWORD, value: rootpw}
        - {name: MYSQL_DATABASE, value: shop}
        - {name: MARIADB_USER, value: app}
        - {name: MARIADB_PASSWORD, value: apppw}
        readinessProbe:
          exec: {command: [mariadb-admin, -uapp, -papppw, -h127.0.0.1, ping]}
          periodSeconds: 1
        volumeMounts:
        - {name: data, mountPath: /var/lib/mysql}
        - {name: init, mountPath: /docker-entrypoint-initdb.d}
      volumes:
      - {name: data, persistentVolumeClaim: {claimName: maria}}
      - {name: init, configMap: {name: maria-init}}
"#;

/// The image's defaults: started as root, default `PGDATA`, no init scripts, no volume.
const POSTGRES_BARE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: bare, labels: {app: bare}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: postgres
    image: postgres:latest
    env: [{name: POSTGRES_PASSWORD, value: bare}]
    readinessProbe:
      exec: {command: [pg_isready, -h, 127.0.0.1]}
      periodSeconds: 1
"#;

fn get(k: &Kubectl, kind: &str, name: &str, path: &str) -> anyhow::Result<String> {
    k.ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
}

/// Waits until the pods labelled `app=<app>` are exactly one, Ready, and not `not_uid`;
/// returns its name and uid.
fn wait_one_ready(k: &Kubectl, app: &str, not_uid: &str) -> anyhow::Result<(String, String)> {
    let out = wait_for(
        k,
        &[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.containerStatuses[*].ready} {.metadata.deletionTimestamp}|{end}",
        ],
        &format!("one {app} pod ready"),
        LONG,
        |s| {
            let pods: Vec<&str> = s.split('|').filter(|p| !p.is_empty()).collect();
            pods.len() == 1 && {
                let f: Vec<&str> = pods[0].split_whitespace().collect();
                f.len() == 3 && f[2] == "true" && f[1] != not_uid
            }
        },
    )?;
    let f: Vec<&str> = out.split_whitespace().collect();
    Ok((f[0].to_string(), f[1].to_string()))
}

fn psql(k: &Kubectl, pod: &str, sql: &str) -> anyhow::Result<String> {
    Ok(k.ok(&[
        "exec",
        pod,
        "--",
        "psql",
        "-U",
        "lab",
        "-d",
        "labdb",
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
        sql,
    ])?
    .trim()
    .to_string())
}

fn mariadb(k: &Kubectl, pod: &str, sql: &str) -> anyhow::Result<String> {
    Ok(k.ok(&[
        "exec",
        pod,
        "--",
        "mariadb",
        "-uapp",
        "-papppw",
        "-h127.0.0.1",
        "shop",
        "-N",
        "-e",
        sql,
    ])?
    .trim()
    .to_string())
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build postgres mariadb)"]
fn postgres_and_mariadb_keep_their_data() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let Node {
        mut lotse,
        kubectl: k,
        data,
        args,
        ..
    } = Node::start(
        tmp.path(),
        "db-node",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    // The database archives are large (~15 s each to import): `lotse images import` puts them
    // into the running node's containerd, so the node registers first.
    let images = e2e::lotse::require_images(&["postgres.tar", "mariadb.tar"])?;
    let imports: Vec<std::process::Child> = ["postgres.tar", "mariadb.tar"]
        .iter()
        .map(|img| {
            std::process::Command::new(e2e::bin_dir().join("lotse"))
                .args(["images", "import", "--data-dir"])
                .arg(&data)
                .arg(images.join(img))
                .stdout(std::process::Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in imports {
        anyhow::ensure!(c.wait()?.success(), "lotse images import failed");
    }
    let pods = |k: &Kubectl| {
        let p = k
            .run(&["get", "pods", "-o", "wide"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        let e = k
            .run(&["get", "events"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        let l = k
            .run(&["logs", "-l", "app in (pg,maria)", "--tail=30"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        format!("{p}\n{e}\n{l}")
    };

    k.ok_stdin(&["apply", "-f", "-"], POSTGRES)?;
    k.ok_stdin(&["apply", "-f", "-"], MARIADB)?;
    k.ok_stdin(&["apply", "-f", "-"], POSTGRES_BARE)?;

    // PostgreSQL: the database made by the entrypoint, with both init scripts run once.
    let (pg, uid) = wait_one_ready(&k, "pg", "").with_context(|| pods(&k))?;
    assert_eq!(pg, "pg-0");
    assert!(
        psql(&k, &pg, "SHOW server_version")?.starts_with("15."),
        "PostgreSQL 15"
    );
    assert_eq!(
        psql(&k, &pg, "SELECT string_agg(v, ',' ORDER BY id) FROM rows")?,
        "from-initdb-sql,from-initdb-sh"
    );
    // UID 999 owns the data; remote hosts log in with the password (scram-sha-256), as in
    // the Docker Hub image.
    assert_eq!(
        k.ok(&[
            "exec",
            &pg,
            "--",
            "stat",
            "-c",
            "%u %a",
            "/var/lib/postgresql/data/pgdata"
        ])?
        .trim(),
        "999 700"
    );
    let ip = get(&k, "pod", &pg, "{.status.podIP}")?;
    let url = format!("postgresql://lab:s3cret@{ip}/labdb");
    assert_eq!(
        k.ok(&[
            "exec",
            &pg,
            "--",
            "psql",
            &url,
            "-tAc",
            "SELECT current_user"
        ])?
        .trim(),
        "lab"
    );
    let bad = k.run(&[
        "exec",
        &pg,
        "--",
        "psql",
        &format!("postgresql://lab:wrong@{ip}/labdb"),
        "-tAc",
        "SELECT 1",
    ])?;
    assert!(
        bad.stderr
            .contains("password authentication failed for user \"lab\""),
        "{}",
        bad.stderr
    );
    psql(
        &k,
        &pg,
        "INSERT INTO rows (v) SELECT 'row-' || g FROM generate_series(1, 100) g",
    )?;
    let count = "SELECT count(*) FROM rows";
    assert_eq!(psql(&k, &pg, count)?, "102");

    // The claim is Bound to a local-path volume on the pod's node.
    assert_eq!(get(&k, "pvc", "data-pg-0", "{.status.phase}")?, "Bound");
    let pv = get(&k, "pvc", "data-pg-0", "{.spec.volumeName}")?;
    assert_eq!(
        get(&k, "pv", &pv, "{.spec.storageClassName}")?,
        "local-path"
    );
    assert_eq!(
        get(
            &k,
            "pv",
            &pv,
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"
        )?,
        "db-node"
    );
    assert_eq!(get(&k, "pod", &pg, "{.spec.nodeName}")?, "db-node");
    let dir = get(&k, "pv", &pv, "{.spec.hostPath.path}{.spec.local.path}")?;
    assert!(
        std::path::Path::new(&dir)
            .join("pgdata/PG_VERSION")
            .is_file(),
        "the database lives in the volume's directory {dir}"
    );

    // The pod goes; its replacement finds the rows (and runs no init script again).
    k.ok(&["delete", "pod", &pg, "--wait=false"])?;
    let (pg, uid) = wait_one_ready(&k, "pg", &uid).with_context(|| pods(&k))?;
    assert_eq!(psql(&k, &pg, count)?, "102");

    // Scale to 0 and back.
    k.ok(&["scale", "statefulset", "pg", "--replicas=0"])?;
    wait_for(
        &k,
        &["get", "pods", "-l", "app=pg", "-o", "name"],
        "pg scaled to 0",
        LONG,
        |s| s.trim().is_empty(),
    )
    .with_context(|| pods(&k))?;
    k.ok(&["scale", "statefulset", "pg", "--replicas=1"])?;
    let (pg, _) = wait_one_ready(&k, "pg", &uid).with_context(|| pods(&k))?;
    assert_eq!(psql(&k, &pg, count)?, "102");
    psql(&k, &pg, "INSERT INTO rows (v) VALUES ('before-kill')")?;

    // The image's defaults: started as root, it drops to UID 999, which owns the default PGDATA.
    wait_one_ready(&k, "bare", "").with_context(|| pods(&k))?;
    let status = k.ok(&["exec", "bare", "--", "cat", "/proc/1/status"])?;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("999")),
        "{status}"
    );
    assert_eq!(
        k.ok(&[
            "exec",
            "bare",
            "--",
            "stat",
            "-c",
            "%U %a",
            "/var/lib/postgresql/data"
        ])?
        .trim(),
        "postgres 700"
    );
    assert_eq!(
        k.ok(&[
            "exec",
            "bare",
            "--",
            "psql",
            "-U",
            "postgres",
            "-tAc",
            "SELECT current_database()"
        ])?
        .trim(),
        "postgres"
    );
    k.ok(&["delete", "pod", "bare", "--wait=false"])?;

    // MariaDB: root password, the MYSQL_DATABASE alias, the user and the init scripts.
    let (maria, muid) = wait_one_ready(&k, "maria", "").with_context(|| pods(&k))?;
    assert!(
        mariadb(&k, &maria, "SELECT VERSION()")?.starts_with("10.11."),
        "MariaDB 10.11"
    );
    assert_eq!(
        mariadb(&k, &maria, "SELECT GROUP_CONCAT(v) FROM items")?,
        "from-initdb-sh"
    );
    mariadb(&k, &maria, "INSERT INTO items (v) VALUES ('kept')")?;
    let root = k.ok(&[
        "exec",
        &maria,
        "--",
        "mariadb",
        "-uroot",
        "-prootpw",
        "-h127.0.0.1",
        "-N",
        "-e",
        "SELECT COUNT(*) FROM shop.items",
    ])?;
    assert_eq!(root.trim(), "2");
    // Started as root, the server runs as UID 999 and owns its data.
    let status = k.ok(&["exec", &maria, "--", "cat", "/proc/1/status"])?;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("999")),
        "{status}"
    );
    assert_eq!(
        k.ok(&[
            "exec",
            &maria,
            "--",
            "stat",
            "-c",
            "%u",
            "/var/lib/mysql/ibdata1"
        ])?
        .trim(),
        "999"
    );
    k.ok(&["delete", "pod", &maria, "--wait=false"])?;
    let (maria, _) = wait_one_ready(&k, "maria", &muid).with_context(|| pods(&k))?;
    assert_eq!(
        mariadb(&k, &maria, "SELECT GROUP_CONCAT(v ORDER BY id) FROM items")?,
        "from-initdb-sh,kept"
    );
    assert_eq!(get(&k, "pvc", "maria", "{.status.phase}")?, "Bound");

    // kill -9 `lotse up` and start it again: the rows are still there, also for a new pod.
    lotse.signal("KILL")?;
    let lotse = Lotse::start(&data, &args)?;
    wait_api_back(&k, "db-node", || lotse.log())?;
    let (pg, uid) = wait_one_ready(&k, "pg", "").with_context(|| pods(&k))?;
    k.ok(&["delete", "pod", &pg, "--wait=false"])?;
    let (pg, _) = wait_one_ready(&k, "pg", &uid).with_context(|| pods(&k))?;
    assert_eq!(psql(&k, &pg, count)?, "103");
    assert_eq!(get(&k, "pvc", "data-pg-0", "{.spec.volumeName}")?, pv);
    // Lotse's drop deletes the pods and stops it; the set would re-create its pod.
    k.ok(&["delete", "statefulset,deployment", "--all", "--wait=false"])?;
    drop(lotse);
    Ok(())
}
