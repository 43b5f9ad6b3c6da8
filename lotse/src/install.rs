//! Installing what a node runs (and what image builds need) from Debian's packages.
use anyhow::{Context, bail};

/// A program that `lotse up` (or something it starts) runs, and the Debian package shipping it.
pub struct Need {
    /// Executable name, or an absolute path for a file that is not on PATH.
    what: &'static str,
    /// Debian package.
    pkg: &'static str,
}

const fn need(what: &'static str, pkg: &'static str) -> Need {
    Need { what, pkg }
}

/// What the node runs: containerd (with its shim and `ctr` for image import), runc, the CNI
/// loopback plugin, `ip` + `nsenter` (lotse-cni, node address), `kill` (stopping containerd and
/// exec sessions), `mount`/`umount` (volumes), `script` (exec with a tty), `df` (node disk),
/// `nft` (the node network agent's Service rules).
const RUNTIME_NEEDS: &[Need] = &[
    need("containerd", "containerd"),
    need("containerd-shim-runc-v2", "containerd"),
    need("ctr", "containerd"),
    need("runc", "runc"),
    need("loopback", "containernetworking-plugins"),
    need("ip", "iproute2"),
    need("nsenter", "util-linux"),
    need("kill", "procps"),
    need("mount", "mount"),
    need("umount", "mount"),
    need("script", "bsdutils"),
    need("df", "coreutils"),
    need("nft", "nftables"),
];

const BUSYBOX_NEEDS: &[Need] = &[need("busybox", "busybox-static")];
const PAUSE_NEEDS: &[Need] = &[
    need("gcc", "gcc"),
    need("strip", "binutils"),
    need("libc.a", "libc6-dev"),
];
const DEBIAN_NEEDS: &[Need] = &[
    need("debootstrap", "debootstrap"),
    need("chroot", "coreutils"),
];

/// The cluster DNS's and the ingress controller's images: the binary's shared libraries
/// (`strip` is used when present).
const DNS_NEEDS: &[Need] = &[need("ldd", "libc-bin")];

/// What kubelet/images/build.sh runs for `image` (besides [`MKIMAGE_NEEDS`]).
fn build_needs(image: &str) -> &'static [Need] {
    match image {
        "busybox" => BUSYBOX_NEEDS,
        "pause" => PAUSE_NEEDS,
        "dns" | "ingress" => DNS_NEEDS,
        "debian" | "nginx" | "postgres" | "mariadb" => DEBIAN_NEEDS,
        _ => &[],
    }
}

/// Every image build needs these (mkimage.sh).
const MKIMAGE_NEEDS: &[Need] = &[
    need("jq", "jq"),
    need("tar", "tar"),
    need("gzip", "gzip"),
    need("sha256sum", "coreutils"),
];

const BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Whether `n` is satisfied on this machine.
fn present(n: &Need) -> bool {
    match n.what {
        "loopback" => {
            kubelet::runtime::find_binary("loopback", &["/usr/lib/cni", "/opt/cni/bin"]).is_some()
        }
        // Static glibc for the pause binary: /usr/lib/<triplet>/libc.a.
        "libc.a" => std::fs::read_dir("/usr/lib")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.path().join("libc.a").is_file())
            })
            .unwrap_or(false),
        // build.sh copies busybox into the image, so it must be the static one.
        "busybox" => kubelet::runtime::find_binary("busybox", BIN_DIRS)
            .is_some_and(|p| std::fs::read(p).is_ok_and(|b| is_static_elf(&b))),
        bin => kubelet::runtime::find_binary(bin, BIN_DIRS).is_some(),
    }
}

/// True for a 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(|a| u64::from_le_bytes(a) as usize)
    };
    if b.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != PT_INTERP))
}

/// The effective user id (the owner of /proc/self).
pub fn euid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Whether apt has package lists (`apt-get update` has run since the lists were last cleared, as
/// they are on fresh cloud images, debootstrapped roots and container images).
fn apt_has_lists() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

/// Runs `apt-get <args>` non-interactively with its output on our stderr (stdout is reserved for
/// the `export KUBECONFIG=…` line); returns whether it succeeded and its stderr.
fn apt_get(args: &[&str]) -> anyhow::Result<(bool, String)> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsFd;
    let mut child = std::process::Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=300", "-q"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr().as_fd().try_clone_to_owned()?)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running apt-get")?;
    let mut err = String::new();
    if let Some(pipe) = child.stderr.take() {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            err.push_str(&line);
            err.push('\n');
        }
    }
    Ok((child.wait()?.success(), err))
}

/// Makes sure the programs the node runs (with `runtime`) and the tools that build `images` are
/// installed, installing the missing Debian packages with apt-get (as root). Package
/// lists are fetched first when there are none, and again when apt cannot locate a package.
pub fn install_missing(runtime: bool, images: &[String]) -> anyhow::Result<()> {
    let mut needs: Vec<&Need> = Vec::new();
    if runtime {
        needs.extend(RUNTIME_NEEDS);
    }
    if !images.is_empty() {
        needs.extend(MKIMAGE_NEEDS);
        for n in images.iter().flat_map(|img| build_needs(img)) {
            // debian, nginx, postgres and mariadb need the same tools
            if !needs.iter().any(|m| m.what == n.what) {
                needs.push(n);
            }
        }
    }
    let missing = |needs: &[&Need]| -> Vec<(&'static str, &'static str)> {
        needs
            .iter()
            .filter(|n| !present(n))
            .map(|n| (n.what, n.pkg))
            .collect()
    };
    let miss = missing(&needs);
    if miss.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = miss.iter().map(|(_, p)| *p).collect();
    pkgs.sort();
    pkgs.dedup();
    let what: Vec<&str> = miss.iter().map(|(w, _)| *w).collect();
    let apt = kubelet::runtime::find_binary("apt-get", BIN_DIRS).is_some();
    if euid() != Some(0) || !apt {
        bail!(
            "missing {} (Debian packages: {}). {}",
            what.join(", "),
            pkgs.join(" "),
            if apt {
                format!(
                    "Run `lotse up` as root to install them, or install them first: sudo apt-get install {}",
                    pkgs.join(" ")
                )
            } else {
                "apt-get is not available: install them with this system's package manager".into()
            }
        );
    }
    eprintln!(
        "lotse: installing missing Debian packages with apt-get: {} (for {})",
        pkgs.join(" "),
        what.join(", ")
    );
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&pkgs);
    if !apt_has_lists() {
        eprintln!("lotse: apt has no package lists yet: running apt-get update");
        let (ok, _) = apt_get(&["update"])?;
        if !ok {
            bail!(
                "apt-get update failed (see above); check /etc/apt/sources.list* and the network"
            );
        }
    }
    let (mut ok, err) = apt_get(&install)?;
    if !ok
        && (err.contains("Unable to locate package")
            || err.contains("has no installation candidate"))
    {
        eprintln!(
            "lotse: apt's package lists are out of date: running apt-get update and retrying"
        );
        let (up, _) = apt_get(&["update"])?;
        if !up {
            bail!(
                "apt-get update failed (see above); check /etc/apt/sources.list* and the network"
            );
        }
        ok = apt_get(&install)?.0;
    }
    if !ok {
        bail!("apt-get install {} failed (see above)", pkgs.join(" "));
    }
    let still = missing(&needs);
    if !still.is_empty() {
        let w: Vec<&str> = still.iter().map(|(w, _)| *w).collect();
        bail!(
            "still missing after installing {}: {}",
            pkgs.join(" "),
            w.join(", ")
        );
    }
    eprintln!("lotse: installed {}", pkgs.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header with program headers of `types` right after it.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn static_elf_has_no_interpreter() {
        const PT_LOAD: u32 = 1;
        const PT_INTERP: u32 = 3;
        assert!(is_static_elf(&elf(&[PT_LOAD, PT_LOAD])));
        assert!(!is_static_elf(&elf(&[PT_INTERP, PT_LOAD])));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // Program headers cut off: not provably static.
        let mut cut = elf(&[PT_LOAD]);
        cut.truncate(66);
        assert!(!is_static_elf(&cut));
        // This test binary is dynamically linked (Rust's default on glibc).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }

    #[test]
    fn image_builds_need_their_tools() {
        let pkgs = |img: &str| -> Vec<&str> { build_needs(img).iter().map(|n| n.pkg).collect() };
        assert_eq!(pkgs("busybox"), ["busybox-static"]);
        assert!(pkgs("pause").contains(&"libc6-dev"));
        assert!(pkgs("nginx").contains(&"debootstrap"));
        assert!(pkgs("postgres").contains(&"debootstrap"));
        assert!(pkgs("mariadb").contains(&"debootstrap"));
        assert_eq!(pkgs("dns"), ["libc-bin"]);
        assert_eq!(pkgs("ingress"), ["libc-bin"]);
        assert!(pkgs("unknown").is_empty());
        assert!(
            RUNTIME_NEEDS
                .iter()
                .any(|n| n.pkg == "containernetworking-plugins")
        );
    }
}
