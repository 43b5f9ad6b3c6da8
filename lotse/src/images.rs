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
    /// Images to build (busybox, pause, debian, nginx); default all.
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

/// Writes the embedded image scripts to a temp dir and runs build.sh.
pub fn build_images(out: &Path, force: bool, images: &[String]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lotse-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [
        ("build.sh", BUILD_SH),
        ("mkimage.sh", MKIMAGE_SH),
        ("pause.c", PAUSE_C),
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
    let st = cmd.status().context("running bash")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !st.success() {
        bail!("image build failed ({st})");
    }
    Ok(())
}
