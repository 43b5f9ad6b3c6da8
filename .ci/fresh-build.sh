#!/usr/bin/env bash
# Proves that .ci/deps.sh is complete: in a bare Debian root (debootstrap minbase from the
# machine's mirror — the `debian` image `lotse images build debian` makes, or a new debootstrap
# when that archive is missing) it runs .ci/deps.sh, then builds the crates that have build
# scripts needing system packages (etcd-client and k8s-cri: protoc + the well-known .proto files,
# a C linker). Only the Rust toolchain (rustup + cargo home, with its crate cache) is bound in
# from the host, plus the host's apt sources and resolv.conf so apt reaches the mirror.
#
# Usage: .ci/fresh-build.sh [DEBIAN_IMAGE_ARCHIVE]   (default target/lotse-images/debian.tar)
# Needs root (unshare, chroot, mounts). Takes ~3-4 min (package downloads + a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ARCHIVE=${1:-target/lotse-images/debian.tar}
WORK=$(mktemp -d "$REPO/target/fresh-build.XXXXXX")
ROOT=$WORK/root
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$ROOT"

T0=$(date +%s)
if [ -s "$ARCHIVE" ]; then
  # A single-layer OCI archive (lotse/images/mkimage.sh): index -> manifest -> the layer.
  mkdir -p "$WORK/oci"
  tar -xf "$ARCHIVE" -C "$WORK/oci"
  M=$(jq -r '.manifests[0].digest' "$WORK/oci/index.json" | cut -d: -f2)
  L=$(jq -r '.layers[0].digest' "$WORK/oci/blobs/sha256/$M" | cut -d: -f2)
  tar -xzf "$WORK/oci/blobs/sha256/$L" -C "$ROOT" 2>/dev/null || tar -xf "$WORK/oci/blobs/sha256/$L" -C "$ROOT"
  rm -rf "$WORK/oci"
else
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase bookworm "$ROOT" "${MIRROR:-http://deb.debian.org/debian}" >/dev/null
fi
echo "fresh-build: bare Debian root ready in $(( $(date +%s) - T0 )) s"
if [ -x "$ROOT/usr/bin/protoc" ] || [ -x "$ROOT/usr/bin/cc" ]; then
  echo "fresh-build: the root is not bare (protoc or cc present)" >&2; exit 1
fi

# The host's apt sources and resolver, so apt-get reaches the same mirror.
rm -rf "$ROOT/etc/apt/sources.list.d"; cp -a /etc/apt/sources.list.d "$ROOT/etc/apt/"
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

# What a newcomer has: the repository's deps.sh, and a crate that uses the build-script crates.
mkdir -p "$ROOT/build/.ci" "$ROOT/build/probe/src"
cp .ci/deps.sh "$ROOT/build/.ci/deps.sh"
cp Cargo.lock "$ROOT/build/probe/Cargo.lock"  # the same versions as Lotse's workspace
ver() { awk -v n="$1" '$0=="name = \""n"\""{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock; }
cat > "$ROOT/build/probe/Cargo.toml" <<EOF
[package]
name = "fresh-build-probe"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
etcd-client = "=$(ver etcd-client)"
k8s-cri = "=$(ver k8s-cri)"
EOF
cat > "$ROOT/build/probe/src/main.rs" <<'EOF'
fn main() {
    println!("{}", std::any::type_name::<etcd_client::Client>());
    println!("{}", std::any::type_name::<k8s_cri::v1::VersionRequest>());
}
EOF

RUSTUP=${RUSTUP_HOME:-$HOME/.rustup}
CARGOH=${CARGO_HOME:-$HOME/.cargo}
mkdir -p "$ROOT/opt/rustup" "$ROOT/opt/cargo"
# The namespace's pid 1 mounts, then runs the build inside the root; leaving it unmounts all.
unshare --mount --pid --fork --propagation private bash -euo pipefail -c '
R=$1; RUSTUP=$2; CARGOH=$3
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --rbind /sys "$R/sys"
mount --bind "$RUSTUP" "$R/opt/rustup"
mount --bind "$CARGOH" "$R/opt/cargo"
chroot "$R" /usr/bin/env -i HOME=/root TERM=dumb \
  PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo CARGO_TARGET_DIR=/build/target \
  bash -euo pipefail -c "
    bash /build/.ci/deps.sh
    cd /build/probe
    cargo build --quiet
    ./../target/debug/fresh-build-probe
  "
' fresh-build "$ROOT" "$RUSTUP" "$CARGOH"
echo "fresh-build: .ci/deps.sh on a bare Debian root builds etcd-client and k8s-cri ($(( $(date +%s) - T0 )) s)"
