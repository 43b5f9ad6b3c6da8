//! The airgap path: image archives (OCI or docker-archive tars) dropped into `<root-dir>/images/`
//! are imported into containerd once per content digest, as k3s does with its `agent/images`.
//!
//! A small record (`<root-dir>/image-archives.json`: archive sha256 → image names, plus the file's
//! size and mtime so an unchanged file is not hashed again) remembers what each archive holds.
//! Whether an image is really in containerd is always asked through CRI `ImageStatus`, so an
//! image that GC removed is imported again from its archive when a pod needs it — and only that
//! archive: a missing image never re-imports the others. One import runs at a time.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What the record knows about one archive content.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Image names the archive gave to containerd (`docker.io/library/nginx:latest`).
    pub names: Vec<String>,
    /// The archive file it was last seen in.
    pub file: PathBuf,
    /// That file's size and mtime (seconds) when it was hashed.
    pub size: u64,
    /// See `size`.
    pub mtime: i64,
}

/// The record file: sha256 (hex) → entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Archives by content digest.
    pub archives: BTreeMap<String, Entry>,
}

impl Record {
    /// Reads the record (missing or unreadable: empty).
    pub fn load(path: &Path) -> Record {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the record atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }

    /// The digest recorded for `file` when its size and mtime are unchanged.
    pub fn digest_of_unchanged(&self, file: &Path, size: u64, mtime: i64) -> Option<String> {
        self.archives
            .iter()
            .find(|(_, e)| e.file == file && e.size == size && e.mtime == mtime)
            .map(|(d, _)| d.clone())
    }

    /// Archive files whose recorded names include `image`.
    pub fn archives_with(&self, image: &str) -> Vec<(String, PathBuf)> {
        self.archives
            .iter()
            .filter(|(_, e)| e.names.iter().any(|n| n == image))
            .map(|(d, e)| (d.clone(), e.file.clone()))
            .collect()
    }
}

/// Whether `name` looks like an image archive the kubelet imports.
pub fn is_archive(name: &str) -> bool {
    name.ends_with(".tar")
        || name.ends_with(".tar.gz")
        || name.ends_with(".tgz")
        || name.ends_with(".oci")
}

/// The archives in `dir`, sorted.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .map(|n| is_archive(&n.to_string_lossy()))
                    .unwrap_or(false)
        })
        .collect();
    files.sort();
    files
}

/// Size and mtime (seconds) of a file.
pub fn stamp(file: &Path) -> Option<(u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    Some((m.size(), m.mtime()))
}

/// sha256 (hex) of a file's content.
pub fn sha256_file(file: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(file)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The image names in `ctr images import`'s output (`unpacking NAME (sha256:…)...done`).
pub fn names_from_ctr_output(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("unpacking "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Imports one archive into containerd's `k8s.io` namespace; returns the image names it gave.
///
/// This shells out to `ctr images import` on purpose: CRI has no import call, and `ctr` is
/// containerd's own client (same package, same version), which reads both OCI and
/// docker-archive layouts and unpacks into the CRI snapshotter.
pub async fn import(socket: &Path, file: &Path) -> Result<Vec<String>, String> {
    let ctr = crate::runtime::find_binary("ctr", &["/usr/bin"])
        .ok_or_else(|| "ctr not found (Debian package containerd)".to_string())?;
    let t0 = Instant::now();
    let out = tokio::process::Command::new(&ctr)
        .arg("-a")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running ctr: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let names = names_from_ctr_output(&String::from_utf8_lossy(&out.stdout));
    tracing::info!(archive = %file.display(), ?names, ms = t0.elapsed().as_millis() as u64, "imported image archive");
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_output_names() {
        let out = "unpacking docker.io/library/nginx:latest (sha256:645210ae72)...done\n\
                   unpacking registry.k8s.io/pause:3.6 (sha256:bb1088)...done\n";
        assert_eq!(
            names_from_ctr_output(out),
            [
                "docker.io/library/nginx:latest",
                "registry.k8s.io/pause:3.6"
            ]
        );
        assert!(names_from_ctr_output("").is_empty());
    }

    #[test]
    fn record_roundtrip_and_lookups() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = dir.path().join("nginx.tar");
        std::fs::write(&a, b"not really a tar").unwrap_or_else(|e| panic!("{e}"));
        let digest = sha256_file(&a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(digest.len(), 64);
        let (size, mtime) = stamp(&a).unwrap_or_default();
        let mut r = Record::default();
        r.archives.insert(
            digest.clone(),
            Entry {
                names: vec!["docker.io/library/nginx:latest".into()],
                file: a.clone(),
                size,
                mtime,
            },
        );
        let path = dir.path().join("image-archives.json");
        r.save(&path).unwrap_or_else(|e| panic!("{e}"));
        let r = Record::load(&path);
        assert_eq!(r.digest_of_unchanged(&a, size, mtime), Some(digest.clone()));
        assert_eq!(r.digest_of_unchanged(&a, size + 1, mtime), None);
        assert_eq!(
            r.archives_with("docker.io/library/nginx:latest"),
            [(digest, a.clone())]
        );
        assert!(
            r.archives_with("docker.io/library/busybox:latest")
                .is_empty()
        );
        assert_eq!(list(dir.path()), [a]);
        assert!(
            Record::load(&dir.path().join("missing.json"))
                .archives
                .is_empty()
        );
    }
}
