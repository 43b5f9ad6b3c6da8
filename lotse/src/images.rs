//! `lotse images`: the node's image archives (build, import, list).
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
pub struct BuildArgs {
    /// Data directory; images go to <data-dir>/kubelet/images unless --output is given.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// Output directory for the archives.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Rebuild archives that already exist.
    #[arg(long)]
    pub force: bool,
    /// Images to build (busybox, pause, debian, nginx, postgres, mariadb, dns, ingress); default
    /// the first four. `dns` and `ingress` are the cluster DNS's and the ingress controller's
    /// pod images (docker.io/lotse/dns:<version>, docker.io/lotse/ingress:<version>) from the
    /// `lotse-dns` and `lotse-ingress` beside this binary; `lotse up` and `lotse join` build
    /// them themselves.
    #[arg(value_delimiter = ',')]
    pub images: Vec<String>,
    /// Don't install missing build tools (as root, the Debian packages busybox-static, gcc,
    /// binutils, libc6-dev, debootstrap, jq are installed with apt-get when needed).
    #[arg(long, env = "LOTSE_NO_INSTALL")]
    pub no_install: bool,
}

const BUILD_SH: &str = include_str!("../images/build.sh");
const MKIMAGE_SH: &str = include_str!("../images/mkimage.sh");
const PAUSE_C: &str = include_str!("../images/pause.c");
const POSTGRES_ENTRYPOINT: &str = include_str!("../images/postgres-entrypoint.sh");
const MARIADB_ENTRYPOINT: &str = include_str!("../images/mariadb-entrypoint.sh");

/// The cluster DNS pods' image (`lotse images build dns`, from the `lotse-dns` binary beside
/// `lotse`): one name per Lotse version, imported from the node's image dir (no registry).
pub const DNS_IMAGE: &str = concat!("docker.io/lotse/dns:", env!("CARGO_PKG_VERSION"));
/// The ingress controller pods' image (`lotse images build ingress`, from `lotse-ingress`).
pub const INGRESS_IMAGE: &str = concat!("docker.io/lotse/ingress:", env!("CARGO_PKG_VERSION"));

/// An image of one of Lotse's own programs, built from the binary beside `lotse`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SystemImage {
    /// The image's name for `lotse images build` (and its archive, `<name>.tar`).
    pub name: &'static str,
    /// The program it runs, beside `lotse`.
    pub program: &'static str,
    /// Its image reference.
    pub image: &'static str,
    /// build.sh's environment variables for the binary and the reference.
    env: (&'static str, &'static str),
    /// The `lotse up` flag that does without it.
    disable_flag: &'static str,
    /// `cargo build` arguments that make the program.
    cargo: &'static str,
}

/// The cluster DNS (`coredns` Deployment).
pub const DNS: SystemImage = SystemImage {
    name: "dns",
    program: "lotse-dns",
    image: DNS_IMAGE,
    env: ("LOTSE_DNS_BINARY", "LOTSE_DNS_IMAGE"),
    disable_flag: "--disable-cluster-dns",
    cargo: "-p dns --bin lotse-dns",
};

/// The ingress controller (`lotse-ingress` DaemonSet).
pub const INGRESS: SystemImage = SystemImage {
    name: "ingress",
    program: "lotse-ingress",
    image: INGRESS_IMAGE,
    env: ("LOTSE_INGRESS_BINARY", "LOTSE_INGRESS_IMAGE"),
    disable_flag: "--disable-ingress",
    cargo: "-p ingress --bin lotse-ingress",
};

const SYSTEM_IMAGES: [SystemImage; 2] = [DNS, INGRESS];

impl SystemImage {
    /// The program's binary beside the running `lotse` (as `cargo build` and an installation
    /// put them).
    pub fn binary(&self) -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("finding the lotse binary")?;
        let bin = exe.with_file_name(self.program);
        if !bin.is_file() {
            bail!(
                "{} not found: the {} image is built from the {} binary beside lotse \
                 (cargo build --release {}, then copy it next to {}); or run without it ({})",
                bin.display(),
                self.name,
                self.program,
                self.cargo,
                exe.display(),
                self.disable_flag,
            );
        }
        Ok(bin)
    }

    /// Builds the image into `dir` unless the archive there is of the same binary (build.sh
    /// compares the binary's sha256 with the archive's annotation): ~1 s when built, ~0.5 s
    /// when current.
    pub fn ensure(&self, dir: &Path) -> anyhow::Result<()> {
        build_images(dir, false, &[self.name.to_string()])
    }
}

/// Writes the embedded image scripts to a temp dir and runs build.sh.
pub fn build_images(out: &Path, force: bool, images: &[String]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lotse-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [
        ("build.sh", BUILD_SH),
        ("mkimage.sh", MKIMAGE_SH),
        ("pause.c", PAUSE_C),
        ("postgres-entrypoint.sh", POSTGRES_ENTRYPOINT),
        ("mariadb-entrypoint.sh", MARIADB_ENTRYPOINT),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(dir.join("build.sh")).arg(out);
    if force {
        cmd.arg("--force");
    }
    cmd.args(images);
    for sys in SYSTEM_IMAGES {
        if images.iter().any(|i| i == sys.name) {
            cmd.env(sys.env.0, sys.binary()?).env(sys.env.1, sys.image);
        }
    }
    let st = cmd.status().context("running bash")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !st.success() {
        bail!("image build failed ({st})");
    }
    Ok(())
}

/// `lotse images import`.
#[derive(Parser)]
pub struct ImportArgs {
    /// Data directory; the archive is kept in <data-dir>/kubelet/images.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// The image name the archive should carry (e.g. `myapp:1.0`, `registry.example/team/app:v2`);
    /// default: the name(s) inside the archive (`docker save` RepoTags, or the OCI index's
    /// `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations).
    #[arg(long)]
    pub name: Option<String>,
    /// A `docker save` archive or an OCI image layout archive (`.tar`, or gzip-compressed).
    pub file: PathBuf,
}

/// `lotse images list`.
#[derive(Parser)]
pub struct ListArgs {
    /// Data directory of the node.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
}

/// The two archive formats containerd imports.
#[derive(Debug, PartialEq)]
enum Format {
    /// `docker save`: `manifest.json` with `RepoTags`.
    Docker,
    /// OCI image layout: `oci-layout` + `index.json`.
    Oci,
}

/// An image archive read into memory: its entries in order, its format and the names it carries.
struct Archive {
    entries: Vec<(tar::Header, Vec<u8>)>,
    format: Format,
}

impl Archive {
    fn read(path: &Path) -> anyhow::Result<Archive> {
        use std::io::Read;
        let mut raw = Vec::new();
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .read_to_end(&mut raw)?;
        let plain = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .with_context(|| format!("{}: not a valid gzip file", path.display()))?;
            out
        } else {
            raw
        };
        let mut entries = Vec::new();
        let mut ar = tar::Archive::new(&plain[..]);
        for e in ar
            .entries()
            .with_context(|| format!("{}: not a tar archive", path.display()))?
        {
            let mut e = e.with_context(|| format!("{}: not a tar archive", path.display()))?;
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            entries.push((e.header().clone(), data));
        }
        let has = |name: &str| {
            entries.iter().any(|(h, _)| {
                h.path()
                    .map(|p| p.to_string_lossy().trim_start_matches("./") == name)
                    .unwrap_or(false)
            })
        };
        let format = if has("index.json") && has("oci-layout") {
            Format::Oci
        } else if has("manifest.json") {
            Format::Docker
        } else {
            bail!(
                "{}: neither an OCI image layout (oci-layout + index.json) nor a `docker save` archive (manifest.json)",
                path.display()
            );
        };
        Ok(Archive { entries, format })
    }

    fn file(&self, name: &str) -> Option<&Vec<u8>> {
        self.entries
            .iter()
            .find(|(h, _)| {
                h.path()
                    .map(|p| p.to_string_lossy().trim_start_matches("./") == name)
                    .unwrap_or(false)
            })
            .map(|(_, d)| d)
    }

    fn file_mut(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        self.entries
            .iter_mut()
            .find(|(h, _)| {
                h.path()
                    .map(|p| p.to_string_lossy().trim_start_matches("./") == name)
                    .unwrap_or(false)
            })
            .map(|(_, d)| d)
    }

    /// The image names the archive carries (normalized as containerd stores them).
    fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        match self.format {
            Format::Docker => {
                let m: serde_json::Value =
                    serde_json::from_slice(self.file("manifest.json").map_or(&[][..], |v| v))
                        .context("manifest.json is not JSON")?;
                for img in m.as_array().into_iter().flatten() {
                    for t in img["RepoTags"].as_array().into_iter().flatten() {
                        if let Some(t) = t.as_str() {
                            out.push(normalize(t)?);
                        }
                    }
                }
            }
            Format::Oci => {
                let idx: serde_json::Value =
                    serde_json::from_slice(self.file("index.json").map_or(&[][..], |v| v))
                        .context("index.json is not JSON")?;
                for m in idx["manifests"].as_array().into_iter().flatten() {
                    if let Some(n) = m["annotations"]["io.containerd.image.name"].as_str() {
                        out.push(normalize(n)?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Gives the archive exactly one name: `name`.
    fn rename(&mut self, name: &str) -> anyhow::Result<()> {
        let full = normalize(name)?;
        let tag = full.rsplit_once(':').map(|(_, t)| t.to_string());
        match self.format {
            Format::Docker => {
                let data = self.file_mut("manifest.json").context("manifest.json")?;
                let mut m: serde_json::Value = serde_json::from_slice(data)?;
                let Some(first) = m.as_array_mut().and_then(|a| a.first_mut()) else {
                    bail!("manifest.json lists no image");
                };
                first["RepoTags"] = serde_json::json!([full]);
                *data = serde_json::to_vec(&m)?;
            }
            Format::Oci => {
                let data = self.file_mut("index.json").context("index.json")?;
                let mut idx: serde_json::Value = serde_json::from_slice(data)?;
                let Some(ms) = idx["manifests"].as_array_mut() else {
                    bail!("index.json lists no manifest");
                };
                // One entry per distinct manifest, named `name`.
                let mut seen = std::collections::HashSet::new();
                ms.retain(|m| seen.insert(m["digest"].as_str().unwrap_or("").to_string()));
                if ms.len() != 1 {
                    bail!(
                        "the archive holds {} images; --name can name an archive of one image only",
                        ms.len()
                    );
                }
                ms[0]["annotations"]["io.containerd.image.name"] = full.clone().into();
                if let Some(t) = tag {
                    ms[0]["annotations"]["org.opencontainers.image.ref.name"] = t.into();
                }
                *data = serde_json::to_vec(&idx)?;
            }
        }
        Ok(())
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tar.tmp");
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut b = tar::Builder::new(f);
        for (h, data) in &self.entries {
            let mut h = h.clone();
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, &data[..])?;
        }
        b.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// An image reference as containerd stores it: `docker.io/library/` added to short names and
/// `:latest` to untagged ones (Docker's normalization). Refuses what does not parse.
fn normalize(name: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || "._-/:@".contains(c)
                || c.is_ascii_uppercase()
        })
        && !name.starts_with(['/', ':', '@', '.', '-'])
        && !name.ends_with(['/', ':', '@']);
    if !valid {
        bail!("invalid image name {name:?}: use [host[:port]/]path[:tag], e.g. myapp:1.0");
    }
    let (path, digest) = match name.split_once('@') {
        Some((p, d)) => (p, Some(d)),
        None => (name, None),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (path, None),
    };
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        bail!("invalid image name {name:?}: repository name must be lowercase");
    }
    let first = repo.split('/').next().unwrap_or("");
    let has_host =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full_repo = if has_host {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    Ok(match (tag, digest) {
        (_, Some(d)) => format!(
            "{full_repo}{}@{d}",
            tag.map(|t| format!(":{t}")).unwrap_or_default()
        ),
        (Some(t), None) => format!("{full_repo}:{t}"),
        (None, None) => format!("{full_repo}:latest"),
    })
}

/// A file name for an archive of image `name` in the images dir.
fn archive_file_name(name: &str) -> String {
    let short = name
        .trim_start_matches("docker.io/library/")
        .trim_start_matches("docker.io/");
    let safe: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.tar")
}

/// Puts the archive into the node's image store: <data-dir>/kubelet/images (where the kubelet
/// imports from), and straight into the node's containerd when it is running.
pub fn import(a: ImportArgs) -> anyhow::Result<()> {
    let mut ar = Archive::read(&a.file)?;
    if let Some(n) = &a.name {
        ar.rename(n)?;
    }
    let names = ar.names()?;
    let Some(first) = names.first() else {
        bail!(
            "{} names no image: give it one with --name (e.g. --name myapp:1.0)",
            a.file.display()
        );
    };
    let dir = a.data_dir.join("kubelet/images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dst = dir.join(archive_file_name(first));
    ar.write(&dst)?;
    println!("{}: {}", dst.display(), names.join(", "));
    let socket = a.data_dir.join("kubelet/containerd/containerd.sock");
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        // `ctr images import` is containerd's own importer (the kubelet imports with it too);
        // CRI has no import call.
        let ctr = kubelet::runtime::find_binary("ctr", &["/usr/bin"])
            .context("ctr not found (Debian package containerd)")?;
        let out = std::process::Command::new(ctr)
            .arg("-a")
            .arg(&socket)
            .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
            .arg(&dst)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "importing into the node's containerd: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("imported into the node's containerd");
    } else {
        println!("the node's containerd is not running: the kubelet imports it when it starts");
    }
    Ok(())
}

/// Lists the images the node's containerd holds (as `crictl images` does) and the archives in
/// <data-dir>/kubelet/images with the names they carry.
pub async fn list(a: ListArgs) -> anyhow::Result<()> {
    let socket = a.data_dir.join("kubelet/containerd/containerd.sock");
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        let mut cri = kubelet::runtime::connect(&socket.to_string_lossy())?;
        let images = cri
            .img
            .list_images(k8s_cri::v1::ListImagesRequest::default())
            .await
            .context("listing images over CRI")?
            .into_inner()
            .images;
        let mut rows = vec![[
            "IMAGE".to_string(),
            "TAG".to_string(),
            "IMAGE ID".to_string(),
            "SIZE".to_string(),
        ]];
        for img in images {
            let id = img
                .id
                .trim_start_matches("sha256:")
                .chars()
                .take(13)
                .collect::<String>();
            let size = human_size(img.size);
            for t in &img.repo_tags {
                let (repo, tag) = t.rsplit_once(':').unwrap_or((t, "<none>"));
                rows.push([repo.to_string(), tag.to_string(), id.clone(), size.clone()]);
            }
            if img.repo_tags.is_empty() {
                for d in &img.repo_digests {
                    let repo = d.split('@').next().unwrap_or(d);
                    rows.push([repo.to_string(), "<none>".into(), id.clone(), size.clone()]);
                }
            }
        }
        print_table(&rows);
    } else {
        println!(
            "the node's containerd is not running ({} does not answer); archives only:",
            socket.display()
        );
    }
    let dir = a.data_dir.join("kubelet/images");
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    archives.sort();
    if !archives.is_empty() {
        println!();
        let mut rows = vec![["ARCHIVE".to_string(), "NAMES".to_string()]];
        for p in archives {
            let names = Archive::read(&p)
                .and_then(|a| a.names())
                .map(|n| n.join(","))
                .unwrap_or_else(|e| format!("<{e}>"));
            rows.push([p.display().to_string(), names]);
        }
        print_table(&rows);
    }
    Ok(())
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == N {
                    c.clone()
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// Sizes as crictl prints them (base 1000, e.g. `2.14MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{:.3}{}", v, UNITS[u]).replace(".000", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_containerd_stores_them() {
        assert_eq!(
            normalize("nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            normalize("nginx:1.22").unwrap(),
            "docker.io/library/nginx:1.22"
        );
        assert_eq!(normalize("team/app").unwrap(), "docker.io/team/app:latest");
        assert_eq!(
            normalize("localhost:5000/app:v1").unwrap(),
            "localhost:5000/app:v1"
        );
        assert_eq!(
            normalize("registry.example/a/b@sha256:abc").unwrap(),
            "registry.example/a/b@sha256:abc"
        );
        assert!(normalize("UPPER:1").is_err());
        assert!(normalize("a b").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("app:").is_err());
    }

    #[test]
    fn archive_names_are_file_safe() {
        assert_eq!(
            archive_file_name("docker.io/library/nginx:1.22"),
            "nginx_1.22.tar"
        );
        assert_eq!(
            archive_file_name("localhost:5000/team/app:v1"),
            "localhost_5000_team_app_v1.tar"
        );
    }

    fn oci_archive(dir: &Path, names: &[&str]) -> PathBuf {
        let path = dir.join("img.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": names.iter().map(|n| serde_json::json!({
                "digest": "sha256:aa", "size": 1,
                "annotations": {"io.containerd.image.name": n}
            })).collect::<Vec<_>>()
        });
        for (name, data) in [
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json", serde_json::to_vec(&index).unwrap()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.finish().unwrap();
        path
    }

    #[test]
    fn oci_archives_are_renamed_to_one_name() {
        let tmp = tempfile::tempdir().unwrap();
        let p = oci_archive(
            tmp.path(),
            &["docker.io/library/x:latest", "docker.io/library/x:1"],
        );
        let mut a = Archive::read(&p).unwrap();
        assert_eq!(a.format, Format::Oci);
        assert_eq!(a.names().unwrap().len(), 2);
        a.rename("myapp:2.0").unwrap();
        let out = tmp.path().join("out.tar");
        a.write(&out).unwrap();
        let b = Archive::read(&out).unwrap();
        assert_eq!(b.names().unwrap(), ["docker.io/library/myapp:2.0"]);
    }

    #[test]
    fn other_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.tar");
        std::fs::write(&p, b"not a tar").unwrap();
        assert!(Archive::read(&p).is_err());
        let p = oci_archive(tmp.path(), &[]);
        let a = Archive::read(&p).unwrap();
        assert!(a.names().unwrap().is_empty());
    }

    #[test]
    fn embedded_scripts_parse() {
        for (name, text) in [
            ("build.sh", BUILD_SH),
            ("mkimage.sh", MKIMAGE_SH),
            ("postgres-entrypoint.sh", POSTGRES_ENTRYPOINT),
            ("mariadb-entrypoint.sh", MARIADB_ENTRYPOINT),
        ] {
            let out = std::process::Command::new("bash")
                .args(["-n", "-c", text])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn sizes_read_as_crictl_prints_them() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(2_140_160), "2.140MB");
        assert_eq!(human_size(1_000_000), "1MB");
    }
}
