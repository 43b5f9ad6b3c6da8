#!/usr/bin/env bash
# Installs the Debian packages Lotse needs to build and test (idempotent).
# protobuf-compiler, libprotobuf-dev: etcd-client and the CRI client compile .proto files at build
#   time (libprotobuf-dev carries the well-known types, google/protobuf/descriptor.proto).
# etcd-server, etcd-client (etcdctl): the etcd storage backend's conformance tests and the etcd
#   cluster e2e test start real etcd members; etcdctl inspects a cluster (README).
# containerd, runc, containernetworking-plugins (loopback), iproute2, util-linux: the kubelet's
#   container runtime and pod networking; crun: a second OCI runtime, the RuntimeClass test's
#   handler `crun`.
# nftables: the node network agent programs Services and pod egress masquerade with nft.
# docker-registry, skopeo, apache2-utils (htpasswd): the image-pull e2e tests and benchmark run a
#   local registry with TLS and htpasswd auth and push the built archives into it; e2fsprogs:
#   the image GC test loop-mounts a small ext4 image filesystem.
# busybox-static, gcc, libc6-dev, jq, debootstrap: `lotse images build` (busybox, the pause
#   binary, and nginx on a debootstrapped Debian from the machine's own mirror).
set -euo pipefail
pkgs=(protobuf-compiler libprotobuf-dev etcd-server etcd-client containerd runc crun containernetworking-plugins iproute2 util-linux nftables busybox-static gcc libc6-dev jq debootstrap docker-registry skopeo apache2-utils e2fsprogs tzdata openssl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's etcd-server package starts a system etcd on 2379; tests start their own on free ports.
