//! `lotse backup` and `lotse restore`: a consistent snapshot of a running cluster's store
//! together with its PKI (cluster CA, service-account signing key), and a new data dir made
//! from one — k3s's `etcd-snapshot`, for the embedded SQLite store and for etcd.
//!
//! A backup is a gzip-compressed tar holding `backup.json` (format, time, store), the store and
//! `pki/` (without them a restored cluster would have a new CA, and every kubeconfig and
//! ServiceAccount token issued before would stop working). The store is `state.db` (taken with
//! SQLite's `VACUUM INTO` while the apiserver keeps writing: exactly the writes committed when
//! it began) or, with `--etcd-servers`, `etcd.db`: the snapshot etcd's maintenance API streams
//! (what `etcdctl snapshot save` writes). Restoring an etcd backup makes `<data-dir>/etcd`, a
//! new one-member etcd data dir, as `etcdctl snapshot restore` does. Kubeconfigs are not kept:
//! the apiserver writes them anew at each start.
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;

const FORMAT: u64 = 1;

/// `lotse backup`.
#[derive(Parser)]
pub struct BackupArgs {
    /// The data directory of the cluster (it may be running): its PKI, and its embedded store
    /// unless --etcd-servers is given.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The backup file to write (a .tar.gz; must not exist yet).
    pub file: PathBuf,
}

/// The etcd cluster a cluster's apiserver stores into (the apiserver's flags and variables).
#[derive(Parser, Clone, Debug, Default)]
pub struct EtcdArgs {
    /// Comma-separated etcd client URLs: back up etcd's keyspace (a snapshot through its
    /// maintenance API, from the first member that answers) instead of the embedded store.
    #[arg(long, env = "LOTSE_ETCD_SERVERS", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long, env = "LOTSE_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication.
    #[arg(long, env = "LOTSE_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// SSL key file used to secure etcd communication.
    #[arg(long, env = "LOTSE_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
}

/// `lotse restore`.
#[derive(Parser)]
pub struct RestoreArgs {
    /// A new data directory for the restored cluster (absent or empty); start it with
    /// `lotse up --data-dir` on the same path.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// For an etcd backup: the name of the restored etcd member (start etcd with the same
    /// `--name`), as `etcdctl snapshot restore --name`.
    #[arg(long, default_value = "default")]
    pub etcd_name: String,
    /// For an etcd backup: the restored member's `--initial-cluster` (`name=peer-url`).
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub etcd_initial_cluster: String,
    /// For an etcd backup: the restored member's `--initial-advertise-peer-urls`.
    #[arg(long, default_value = "http://localhost:2380")]
    pub etcd_initial_advertise_peer_urls: String,
    /// The backup file `lotse backup` wrote.
    pub file: PathBuf,
}

/// Writes a backup of the cluster in `data_dir` to `file`.
pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let size = write_backup(&a.data_dir, &a.etcd, &a.file)?;
    println!(
        "backup of {} written to {} ({size} bytes)",
        a.data_dir.display(),
        a.file.display(),
    );
    Ok(())
}

/// Writes a backup of the cluster in `data_dir` to `file`; returns its size.
fn write_backup(data_dir: &Path, etcd: &EtcdArgs, file: &Path) -> anyhow::Result<u64> {
    let a = BackupArgs {
        data_dir: data_dir.to_path_buf(),
        etcd: etcd.clone(),
        file: file.to_path_buf(),
    };
    let on_etcd = !a.etcd.etcd_servers.is_empty();
    let db = a.data_dir.join("state.db");
    let pki = a.data_dir.join("pki");
    if !on_etcd && !db.is_file() {
        bail!(
            "{} has no embedded store (state.db); for a cluster on etcd, give its --etcd-servers",
            a.data_dir.display()
        );
    }
    if a.file.exists() {
        bail!("{} exists already; choose a new file", a.file.display());
    }
    let work = tempfile::Builder::new()
        .prefix("lotse-backup")
        .tempdir_in(
            a.file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("creating a temporary directory beside the backup file")?;
    let (snap, store) = if on_etcd {
        let snap = work.path().join(ETCD_DB);
        snapshot_etcd(&a.etcd, &snap)?;
        (snap, "etcd")
    } else {
        let snap = work.path().join("state.db");
        apiserver::storage::sqlite::snapshot(&db, &snap).context("snapshotting the store")?;
        (snap, "sqlite")
    };
    let meta = serde_json::json!({
        "format": FORMAT,
        "created": jiff::Timestamp::now().to_string(),
        "source": a.data_dir.display().to_string(),
        "store": store,
    });
    let tmp_out = work.path().join("backup.tar.gz");
    {
        let f = std::fs::File::create(&tmp_out)?;
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let meta_bytes = serde_json::to_vec_pretty(&meta)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(meta_bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
        h.set_cksum();
        tar.append_data(&mut h, "backup.json", &meta_bytes[..])?;
        tar.append_path_with_name(&snap, if on_etcd { ETCD_DB } else { "state.db" })?;
        if pki.is_dir() {
            tar.append_dir_all("pki", &pki)?;
        }
        tar.into_inner()?.finish()?.sync_all()?;
    }
    // Private like the data dir it copies; renamed into place only when complete.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp_out, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp_out, &a.file)
        .or_else(|_| std::fs::copy(&tmp_out, &a.file).map(|_| ()))
        .with_context(|| format!("writing {}", a.file.display()))?;
    Ok(std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0))
}

/// The etcd snapshot's name in a backup.
const ETCD_DB: &str = "etcd.db";

/// Saves a snapshot of the etcd cluster of `etcd` into `path`.
fn snapshot_etcd(etcd: &EtcdArgs, path: &Path) -> anyhow::Result<u64> {
    let tls = apiserver::storage::etcd::EtcdTls {
        ca_file: etcd.etcd_cafile.clone(),
        cert_file: etcd.etcd_certfile.clone(),
        key_file: etcd.etcd_keyfile.clone(),
    };
    let mut out =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    tokio::runtime::Runtime::new()?
        .block_on(apiserver::storage::etcd::save_snapshot(
            &etcd.etcd_servers,
            &tls,
            &mut out,
        ))
        .context("snapshotting etcd")
}

/// Makes `<staging>/etcd`, a one-member etcd data dir, from the snapshot `<staging>/etcd.db`
/// (then removed). A child process: no Rust crate writes etcd's bbolt database and WAL, and
/// Debian's etcd 3.4 has no `etcdutl`; its `etcdctl snapshot restore` is the tool for this
/// (package etcd-client), and it checks the snapshot's sha256 too.
fn restore_etcd(staging: &Path, a: &RestoreArgs) -> anyhow::Result<()> {
    let snap = staging.join(ETCD_DB);
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(staging.join("etcd"))
        .args(["--name", &a.etcd_name])
        .args(["--initial-cluster", &a.etcd_initial_cluster])
        .args([
            "--initial-advertise-peer-urls",
            &a.etcd_initial_advertise_peer_urls,
        ])
        .output()
        .context("running etcdctl (Debian package etcd-client) to restore the etcd snapshot")?;
    if !out.status.success() {
        bail!(
            "etcdctl snapshot restore failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_file(&snap)?;
    Ok(())
}

/// Automatic backups of a running `lotse up`, as k3s's scheduled etcd snapshots
/// (`--etcd-snapshot-schedule-cron`, `--etcd-snapshot-retention`, `--etcd-snapshot-dir`).
#[derive(clap::Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// When to take automatic backups: a cron schedule (5 fields, the host's time zone, as
    /// k3s's --etcd-snapshot-schedule-cron; `@every 6h` and `@daily` work too).
    #[arg(long, env = "LOTSE_BACKUP_SCHEDULE", default_value = "0 */12 * * *")]
    pub backup_schedule: String,
    /// How many automatic backups to keep; older ones are removed.
    #[arg(long, env = "LOTSE_BACKUP_RETENTION", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_retention: u32,
    /// Directory of the automatic backups (default: <data-dir>/backups).
    #[arg(long, env = "LOTSE_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Take no automatic backups.
    #[arg(long, env = "LOTSE_DISABLE_BACKUPS")]
    pub disable_backups: bool,
}

/// File names of automatic backups: `lotse-backup-<node>-<unix seconds>.tar.gz`.
const AUTO_PREFIX: &str = "lotse-backup-";

/// Starts the automatic backups of the cluster in `data_dir` (checks the schedule first).
pub fn spawn_scheduled(
    data_dir: &Path,
    node: &str,
    a: &ScheduleArgs,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if a.disable_backups {
        return Ok(None);
    }
    let schedule = cron_schedule::parse_standard(&a.backup_schedule)
        .map_err(|e| anyhow::anyhow!("--backup-schedule {:?}: {e}", a.backup_schedule))?;
    let dir = a
        .backup_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("backups"));
    let (data_dir, node, keep) = (data_dir.to_path_buf(), node.to_string(), a.backup_retention);
    Ok(Some(tokio::spawn(async move {
        let zone = jiff::tz::TimeZone::system();
        loop {
            let Some(next) = schedule.next(jiff::Timestamp::now(), &zone) else {
                return;
            };
            let wait = jiff::Timestamp::now().duration_until(next);
            tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
            let (d, n, b) = (data_dir.clone(), node.clone(), dir.clone());
            match tokio::task::spawn_blocking(move || take_scheduled(&d, &b, &n, keep)).await {
                Ok(Ok(file)) => tracing::info!(file = %file.display(), "automatic backup written"),
                Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "automatic backup failed"),
                Err(e) => tracing::error!(error = %e, "automatic backup task"),
            }
        }
    })))
}

/// One automatic backup into `dir`, then the oldest beyond `keep` removed.
fn take_scheduled(data_dir: &Path, dir: &Path, node: &str, keep: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let file = dir.join(format!(
        "{AUTO_PREFIX}{node}-{:010}.tar.gz",
        jiff::Timestamp::now().as_second()
    ));
    if !file.exists() {
        write_backup(data_dir, &EtcdArgs::default(), &file)?;
    }
    let mut ours: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{AUTO_PREFIX}{node}-")) && n.ends_with(".tar.gz")
            })
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep as usize);
    for old in &ours[..excess] {
        std::fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(file)
}

/// Makes a data dir from a backup.
pub fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    if a.data_dir.exists()
        && std::fs::read_dir(&a.data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} is not empty: restore into a new data directory (then `lotse up --data-dir` on it)",
            a.data_dir.display()
        );
    }
    let mut raw = Vec::new();
    std::fs::File::open(&a.file)
        .with_context(|| format!("opening {}", a.file.display()))?
        .read_to_end(&mut raw)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
    let staging = a.data_dir.with_extension("restoring");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let mut seen_meta = None;
    let mut seen_db = false;
    let mut seen_etcd = false;
    let entries = archive
        .entries()
        .with_context(|| format!("{}: not a Lotse backup (tar.gz)", a.file.display()))?;
    for e in entries {
        let mut e =
            e.with_context(|| format!("{}: not a Lotse backup (tar.gz)", a.file.display()))?;
        let path = e.path()?.into_owned();
        // Only what a backup holds; nothing may land outside the new data dir.
        let allowed = path == Path::new("backup.json")
            || path == Path::new("state.db")
            || path == Path::new(ETCD_DB)
            || path.starts_with("pki");
        if !allowed
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!("{}: unexpected entry {}", a.file.display(), path.display());
        }
        if path == Path::new("backup.json") {
            let mut s = String::new();
            e.read_to_string(&mut s)?;
            let meta: serde_json::Value = serde_json::from_str(&s).context("backup.json")?;
            seen_meta = Some(meta);
            continue;
        }
        seen_db |= path == Path::new("state.db");
        seen_etcd |= path == Path::new(ETCD_DB);
        e.unpack_in(&staging)?;
    }
    let Some(meta) = seen_meta else {
        bail!("{}: not a Lotse backup (no backup.json)", a.file.display());
    };
    if meta["format"].as_u64() != Some(FORMAT) {
        bail!(
            "{}: backup format {} is not supported (this lotse reads {FORMAT})",
            a.file.display(),
            meta["format"]
        );
    }
    if seen_db == seen_etcd {
        bail!(
            "{}: the backup holds {} (state.db or {ETCD_DB})",
            a.file.display(),
            if seen_db { "two stores" } else { "no store" }
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    if seen_db {
        std::fs::set_permissions(
            staging.join("state.db"),
            std::fs::Permissions::from_mode(0o600),
        )?;
    } else if let Err(e) = restore_etcd(&staging, &a) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if a.data_dir.exists() {
        std::fs::remove_dir(&a.data_dir)?;
    }
    std::fs::rename(&staging, &a.data_dir)
        .with_context(|| format!("moving the restored data into {}", a.data_dir.display()))?;
    let from = format!(
        "restored the backup of {} (taken {}) into {}",
        meta["source"].as_str().unwrap_or("?"),
        meta["created"].as_str().unwrap_or("?"),
        a.data_dir.display(),
    );
    if seen_db {
        println!(
            "{from}; start it with `lotse up --data-dir {}`",
            a.data_dir.display()
        );
    } else {
        println!(
            "{from}; start etcd with `etcd --data-dir {etcd} --name {name} --initial-cluster {cluster} \
             --initial-advertise-peer-urls {peers}` (and its client URLs), then the apiserver or \
             `lotse up` with `--data-dir {dir} --etcd-servers <those client URLs>`",
            etcd = a.data_dir.join("etcd").display(),
            name = a.etcd_name,
            cluster = a.etcd_initial_cluster,
            peers = a.etcd_initial_advertise_peer_urls,
            dir = a.data_dir.display(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_backups_are_kept_up_to_the_retention() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        drop(apiserver::storage::sqlite::SqliteStorage::open(&data.join("state.db")).unwrap());
        let dir = tmp.path().join("backups");
        std::fs::create_dir_all(&dir).unwrap();
        for t in 1..=3 {
            std::fs::write(dir.join(format!("{AUTO_PREFIX}n1-{t:010}.tar.gz")), b"old").unwrap();
        }
        // Another node's and a hand-made backup are not ours to remove.
        std::fs::write(dir.join(format!("{AUTO_PREFIX}n2-0000000001.tar.gz")), b"x").unwrap();
        std::fs::write(dir.join("before-upgrade.tar.gz"), b"x").unwrap();
        let file = take_scheduled(&data, &dir, "n1", 2).unwrap();
        assert!(std::fs::metadata(&file).unwrap().len() > 100);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let newest = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            left,
            [
                "before-upgrade.tar.gz".to_string(),
                format!("{AUTO_PREFIX}n1-0000000003.tar.gz"),
                newest,
                format!("{AUTO_PREFIX}n2-0000000001.tar.gz"),
            ]
        );
    }

    #[test]
    fn a_bad_schedule_is_refused_at_start() {
        let a = ScheduleArgs {
            backup_schedule: "every tuesday".into(),
            backup_retention: 5,
            backup_dir: None,
            disable_backups: false,
        };
        let err = spawn_scheduled(Path::new("/nonexistent"), "n", &a).unwrap_err();
        assert!(err.to_string().contains("--backup-schedule"), "{err}");
    }
}
