#!/bin/bash
# Builds Lotse's base images offline as OCI archives (no registry): one archive per image in OUT_DIR,
# which the kubelet imports into containerd at start (<root-dir>/images/).
#
# Usage: build.sh OUT_DIR [--force] [IMAGE...]     IMAGE: busybox pause debian nginx postgres mariadb dns ingress
#                                                  (default: busybox pause debian nginx)
#   busybox  docker.io/library/busybox:latest, :1.35, :1.35.0 (busybox-static's version)   (~1 s)
#   pause    registry.k8s.io/pause:3.6   static C pause (gcc), the sandbox image               (~1 s)
#   debian   docker.io/library/debian:latest, :12, :12.N, :bookworm   debootstrap minbase from the
#            machine's Debian mirror                                                          (~45 s)
#   nginx    docker.io/library/nginx:latest, :1.22, :1.22.1 (Debian's nginx version)  the debian
#            rootfs + nginx from the mirror                                                (~15 s more)
#   postgres docker.io/library/postgres:latest, :15, :15.N (Debian's PostgreSQL)   the debian rootfs +
#            postgresql-15; docker-entrypoint.sh as the Docker Hub image's, UID 999     (~25 s more)
#   mariadb  docker.io/library/mariadb:latest, :10.11, :10.11.N (Debian's MariaDB)  the debian rootfs +
#            mariadb-server; docker-entrypoint.sh as the Docker Hub image's, UID 999   (~25 s more)
#   dns      $LOTSE_DNS_IMAGE (docker.io/lotse/dns:<lotse version>): the cluster DNS pods' image, Lotse's
#            own $LOTSE_DNS_BINARY (lotse-dns) and exactly the shared libraries it needs (ldd), debug info
#            stripped; rebuilt only when the binary changed (its sha256 is the index annotation
#            dev.lotse.binary.sha256). `lotse up` and `lotse join` build it on every start.       (~1 s)
#   ingress  $LOTSE_INGRESS_IMAGE (docker.io/lotse/ingress:<lotse version>): the ingress controller pods'
#            image from $LOTSE_INGRESS_BINARY (lotse-ingress), built the same way as dns.          (~1 s)
#   debian, nginx, postgres and mariadb share one debootstrap when built in one run.
# Every image carries `latest` and its real version, as the Docker Hub images do.
# Needs: tar, sha256sum, jq, gzip; busybox-static (busybox), gcc + libc6-dev (pause), debootstrap (debian, nginx),
#        ldd (dns; strip from binutils when present).
# An archive that already exists is kept unless --force. Build output is deterministic for busybox and pause.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build.sh OUT_DIR [--force] [IMAGE...]}; shift
FORCE=0; if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
IMAGES=("$@"); [ ${#IMAGES[@]} -eq 0 ] && IMAGES=(busybox pause debian nginx)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# tags REPO TAG... -> "REPO:TAG1,REPO:TAG2,..." (empty tags skipped)
tags() { local repo=$1 out="" t; shift; for t in "$@"; do [ -n "$t" ] && out="$out${out:+,}$repo:$t"; done; echo "$out"; }

need() { command -v "$1" >/dev/null || { echo "build.sh: '$1' not found; install Debian package '$2'" >&2; exit 1; }; }
skip() { if [ $FORCE = 0 ] && [ -s "$OUT/$1.tar" ]; then echo "$1: $OUT/$1.tar exists (use --force to rebuild)"; return 0; fi; return 1; }

busybox_rootfs() { # DIR
  local R=$1; need busybox busybox-static
  local BB; BB=$(command -v busybox)
  file -L "$BB" 2>/dev/null | grep -q 'dynamically' && { echo "busybox at $BB is not static; install busybox-static" >&2; exit 1; }
  rm -rf "$R"; mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc,tmp,var,root,run}
  cp "$BB" "$R/bin/busybox"
  # one symlink per applet (what `busybox --install -s` does, without needing chroot)
  for a in $("$BB" --list-full); do [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
  chmod 1777 "$R/tmp"
}

debian_rootfs() { # DIR
  local R=$1; need debootstrap debootstrap
  if [ ! -x "$WORK/debian-cache/bin/sh" ]; then
    debootstrap --variant=minbase bookworm "$WORK/debian-cache" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
      { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    rm -rf "$WORK/debian-cache"/var/cache/apt/archives/*.deb "$WORK/debian-cache"/var/lib/apt/lists/*
  fi
  rm -rf "$R"; cp -a "$WORK/debian-cache" "$R"
}

apt_in() { # ROOTFS PKG...: install Debian packages into a debian rootfs (no services started)
  local R=$1; shift
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
  chroot "$R" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; { [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -qq; } &&
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null' sh "$@"
  rm -f "$R/usr/sbin/policy-rc.d" "$R/etc/resolv.conf"
}
apt_clean() { # ROOTFS
  chroot "$1" apt-get clean; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/archives/*.deb
}

# binary_image NAME BINARY REF PROGRAM PORT...: an image of one of Lotse's own programs (the
# binary as /usr/local/bin/PROGRAM, exactly the shared libraries it needs, debug info stripped),
# rebuilt only when the binary changed (its sha256 is the index annotation dev.lotse.binary.sha256).
# Sets BUILT=0 when the archive is current (nothing built), else BUILT=1.
binary_image() {
  local name=$1 bin=$2 ref=$3 prog=$4; shift 4
  need ldd libc-bin
  local sum; sum=$(sha256sum "$bin" | cut -d' ' -f1)
  if [ $FORCE = 0 ] && [ -s "$OUT/$name.tar" ] &&
    [ "$(tar -xOf "$OUT/$name.tar" index.json 2>/dev/null | jq -r '.manifests[0].annotations | "\(.["io.containerd.image.name"]) \(.["dev.lotse.binary.sha256"])"' 2>/dev/null)" = "$ref $sum" ]; then
    echo "$name: $OUT/$name.tar is current ($ref, $prog sha256 ${sum:0:12})"; BUILT=0; return 0
  fi
  local R="$WORK/$name" lib p ports=()
  rm -rf "$R"; mkdir -p "$R"/{usr/local/bin,etc,tmp,proc,sys,dev}
  cp "$bin" "$R/usr/local/bin/$prog"
  # debug info is most of a debug build's size
  if command -v strip >/dev/null; then strip --strip-debug "$R/usr/local/bin/$prog"; fi
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
  : > "$R/etc/hosts"; : > "$R/etc/resolv.conf"; : > "$R/etc/hostname"
  chmod 1777 "$R/tmp"
  for p in "$@"; do ports+=(--port "$p"); done
  # written beside and renamed: a kubelet reading the dir never sees half an archive
  "$HERE/mkimage.sh" "$R" "$ref" "$OUT/.$name.tar.tmp" --annotation "dev.lotse.binary.sha256=$sum" \
    "${ports[@]}" --entrypoint "/usr/local/bin/$prog" --
  mv "$OUT/.$name.tar.tmp" "$OUT/$name.tar"
  BUILT=1
}

for img in "${IMAGES[@]}"; do
  T0=$(date +%s)
  case "$img" in
    busybox)
      skip busybox && continue
      busybox_rootfs "$WORK/busybox"
      V=$("$WORK/busybox/bin/busybox" 2>&1 | sed -n '1s/^BusyBox v\([0-9.]*\).*/\1/p')
      "$HERE/mkimage.sh" "$WORK/busybox" "$(tags docker.io/library/busybox latest "$V" "${V%.*}")" "$OUT/busybox.tar" -- sh ;;
    pause)
      skip pause && continue
      need gcc gcc
      mkdir -p "$WORK/pause"
      gcc -Os -static -o "$WORK/pause/pause" "$HERE/pause.c" && strip "$WORK/pause/pause"
      "$HERE/mkimage.sh" "$WORK/pause" registry.k8s.io/pause:3.6 "$OUT/pause.tar" -- /pause ;;
    debian)
      skip debian && continue
      debian_rootfs "$WORK/debian"
      V=$(cat "$WORK/debian/etc/debian_version")
      "$HERE/mkimage.sh" "$WORK/debian" "$(tags docker.io/library/debian latest bookworm "$V" "${V%%.*}")" "$OUT/debian.tar" --gzip -- bash ;;
    nginx)
      skip nginx && continue
      debian_rootfs "$WORK/nginx"
      R="$WORK/nginx"
      cp /etc/resolv.conf "$R/etc/resolv.conf"
      printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
      chroot "$R" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends nginx curl >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*'
      rm -f "$R/usr/sbin/policy-rc.d" "$R/etc/resolv.conf"; rm -rf "$R"/var/cache/apt/archives/*.deb
      # logs to the container's stdout/stderr, as the Docker Hub image does
      ln -sf /dev/stdout "$R/var/log/nginx/access.log"; ln -sf /dev/stderr "$R/var/log/nginx/error.log"
      # serves /usr/share/nginx/html (Debian's welcome page is there too), as the Docker Hub image
      sed -ri 's#^(\s*root) /var/www/html;#\1 /usr/share/nginx/html;#' "$R/etc/nginx/sites-available/default"
      grep -q 'root /usr/share/nginx/html;' "$R/etc/nginx/sites-available/default"
      V=$(chroot "$R" dpkg-query -W -f='${Version}' nginx | sed 's/^[0-9]*://; s/-.*//')
      "$HERE/mkimage.sh" "$R" "$(tags docker.io/library/nginx latest "$V" "${V%.*}")" "$OUT/nginx.tar" --gzip -- nginx -g 'daemon off;' ;;
    postgres)
      skip postgres && continue
      debian_rootfs "$WORK/postgres"
      R="$WORK/postgres"
      # UID/GID 999 as the Docker Hub image (created before the packages, which then reuse it)
      chroot "$R" sh -c 'groupadd -r -g 999 postgres && useradd -r -g postgres -u 999 -d /var/lib/postgresql -s /bin/bash postgres'
      apt_in "$R" postgresql-common
      # no cluster of Debian's own: the entrypoint makes one in $PGDATA
      sed -ri 's/#(create_main_cluster) .*$/\1 = false/' "$R/etc/postgresql-common/createcluster.conf"
      apt_in "$R" postgresql-15 libnss-wrapper xz-utils
      apt_clean "$R"
      PGV=$(chroot "$R" dpkg-query -W -f='${Version}' postgresql-15 | sed 's/^[0-9]*://; s/-.*//')
      PGM=${PGV%%.*}
      # listen on every address, as the Docker Hub image
      sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$R/usr/share/postgresql/$PGM/postgresql.conf.sample"
      grep -q "^listen_addresses = '\*'" "$R/usr/share/postgresql/$PGM/postgresql.conf.sample"
      mkdir -p "$R/run/postgresql" "$R/var/lib/postgresql/data" "$R/docker-entrypoint-initdb.d"
      chown -R 999:999 "$R/run/postgresql" "$R/var/lib/postgresql"
      chmod 3777 "$R/run/postgresql"; chmod 1777 "$R/var/lib/postgresql/data"
      install -m 755 "$HERE/postgres-entrypoint.sh" "$R/usr/local/bin/docker-entrypoint.sh"
      "$HERE/mkimage.sh" "$R" "$(tags docker.io/library/postgres latest "$PGV" "$PGM")" "$OUT/postgres.tar" --gzip --keep-owners \
        --env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/$PGM/bin" \
        --env LANG=C.UTF-8 --env "PG_MAJOR=$PGM" --env "PG_VERSION=$PGV" --env PGDATA=/var/lib/postgresql/data \
        --entrypoint docker-entrypoint.sh --port 5432/tcp -- postgres ;;
    mariadb)
      skip mariadb && continue
      debian_rootfs "$WORK/mariadb"
      R="$WORK/mariadb"
      chroot "$R" sh -c 'groupadd -r -g 999 mysql && useradd -r -g mysql -u 999 -d /var/lib/mysql -s /usr/sbin/nologin mysql'
      apt_in "$R" mariadb-server mariadb-client xz-utils
      apt_clean "$R"
      MV=$(chroot "$R" dpkg-query -W -f='${Version}' mariadb-server | sed 's/^[0-9]*://; s/-.*//')
      # the package's own database goes: the entrypoint makes one in the (empty) data directory;
      # listen on every address and skip name resolution, as the Docker Hub image
      rm -rf "$R/var/lib/mysql"; mkdir -p "$R/var/lib/mysql" "$R/run/mysqld" "$R/docker-entrypoint-initdb.d"
      chown 999:999 "$R/var/lib/mysql" "$R/run/mysqld"; chmod 1777 "$R/run/mysqld"
      sed -ri 's/^(bind-address|skip-networking)/#&/' "$R"/etc/mysql/mariadb.conf.d/*.cnf
      printf '[mariadb]\nhost-cache-size=0\nskip-name-resolve\n' > "$R/etc/mysql/mariadb.conf.d/05-skipcache.cnf"
      install -m 755 "$HERE/mariadb-entrypoint.sh" "$R/usr/local/bin/docker-entrypoint.sh"
      "$HERE/mkimage.sh" "$R" "$(tags docker.io/library/mariadb latest "$MV" "${MV%.*}")" "$OUT/mariadb.tar" --gzip --keep-owners \
        --env LANG=C.UTF-8 --env "MARIADB_VERSION=$MV" --entrypoint docker-entrypoint.sh --port 3306/tcp -- mariadbd ;;
    dns)
      binary_image dns "${LOTSE_DNS_BINARY:?dns: set LOTSE_DNS_BINARY to the lotse-dns binary (lotse images build dns does)}" \
        "${LOTSE_DNS_IMAGE:?dns: set LOTSE_DNS_IMAGE to the image name, e.g. docker.io/lotse/dns:0.1.0}" \
        lotse-dns 53/udp 53/tcp; [ "$BUILT" = 1 ] || continue ;;
    ingress)
      binary_image ingress "${LOTSE_INGRESS_BINARY:?ingress: set LOTSE_INGRESS_BINARY to the lotse-ingress binary (lotse images build ingress does)}" \
        "${LOTSE_INGRESS_IMAGE:?ingress: set LOTSE_INGRESS_IMAGE to the image name, e.g. docker.io/lotse/ingress:0.1.0}" \
        lotse-ingress 80/tcp 443/tcp; [ "$BUILT" = 1 ] || continue ;;
    *) echo "unknown image '$img' (busybox pause debian nginx postgres mariadb dns ingress)" >&2; exit 2 ;;
  esac
  echo "$img: built $OUT/$img.tar in $(( $(date +%s) - T0 )) s"
done
