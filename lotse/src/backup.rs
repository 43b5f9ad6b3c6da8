//! `lotse backup` and `lotse restore`: a consistent snapshot of a running cluster's embedded
//! store together with its PKI (cluster CA, service-account signing key), and a new data dir
//! made from one — k3s's `etcd-snapshot` for Lotse's SQLite store.
//!
//! A backup is a gzip-compressed tar holding `backup.json` (format and time), `state.db` (taken
//! with SQLite's `VACUUM INTO` while the apiserver keeps writing: exactly the writes committed
//! when it began) and `pki/` (without them a restored cluster would have a new CA, and every
//! kubeconfig and ServiceAccount token issued before would stop working). Kubeconfigs are not
//! kept: the apiserver writes them anew at each start.
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;

const FORMAT: u64 = 1;

/// `lotse backup`.
#[derive(Parser)]
pub struct BackupArgs {
    /// The data directory of the cluster (it may be running).
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// The backup file to write (a .tar.gz; must not exist yet).
    pub file: PathBuf,
}

/// `lotse restore`.
#[derive(Parser)]
pub struct RestoreArgs {
    /// A new data directory for the restored cluster (absent or empty); start it with
    /// `lotse up --data-dir` on the same path.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// The backup file `lotse backup` wrote.
    pub file: PathBuf,
}

/// Writes a backup of the cluster in `data_dir` to `file`.
pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let db = a.data_dir.join("state.db");
    let pki = a.data_dir.join("pki");
    if !db.is_file() {
        bail!(
            "{} has no embedded store (state.db); a cluster on etcd is backed up with `etcdctl snapshot save`",
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
    let snap = work.path().join("state.db");
    apiserver::storage::sqlite::snapshot(&db, &snap).context("snapshotting the store")?;
    let meta = serde_json::json!({
        "format": FORMAT,
        "created": jiff::Timestamp::now().to_string(),
        "source": a.data_dir.display().to_string(),
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
        tar.append_path_with_name(&snap, "state.db")?;
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
    println!(
        "backup of {} written to {} ({} bytes)",
        a.data_dir.display(),
        a.file.display(),
        std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0)
    );
    Ok(())
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
    if !seen_db {
        bail!("{}: the backup holds no state.db", a.file.display());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(
        staging.join("state.db"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    if a.data_dir.exists() {
        std::fs::remove_dir(&a.data_dir)?;
    }
    std::fs::rename(&staging, &a.data_dir)
        .with_context(|| format!("moving the restored data into {}", a.data_dir.display()))?;
    println!(
        "restored the backup of {} (taken {}) into {}; start it with `lotse up --data-dir {}`",
        meta["source"].as_str().unwrap_or("?"),
        meta["created"].as_str().unwrap_or("?"),
        a.data_dir.display(),
        a.data_dir.display()
    );
    Ok(())
}
