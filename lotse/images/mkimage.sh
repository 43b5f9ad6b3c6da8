#!/bin/bash
# Build a single-layer OCI image archive from a rootfs directory, no registry, no daemon.
# Usage: mkimage.sh ROOTFS_DIR IMAGE_REF[,IMAGE_REF...] OUT.tar [OPTION...] -- CMD [ARGS...]
#   --gzip             gzip the layer
#   --keep-owners      keep the rootfs' file owners (default: every file root-owned, deterministic)
#   --env K=V          an image Env entry besides PATH (repeatable; a PATH=... entry replaces PATH)
#   --entrypoint PATH  the image's Entrypoint (CMD then is its default arguments)
#   --port P/tcp       an ExposedPorts entry (repeatable)
#   --annotation K=V   an annotation of the index's entries (repeatable), e.g. what the image was
#                      built from
#   e.g. mkimage.sh ./rootfs-busybox docker.io/library/busybox:latest,docker.io/library/busybox:1.35 busybox.tar -- /bin/sh
# Each IMAGE_REF becomes one entry of the index (the same manifest), so the image carries every tag.
# Then:  ctr -a SOCK -n k8s.io images import OUT.tar
# Needs: tar, sha256sum, jq, (gzip if --gzip).
set -euo pipefail
ROOTFS=$1; REF=$2; OUT=$3; shift 3
GZIP=0; KEEP=0; ENV_JSON='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'; EP_JSON=null; PORTS='{}'; ANN='{}'
while [ $# -gt 0 ]; do
  case "$1" in
    --gzip) GZIP=1; shift ;;
    --keep-owners) KEEP=1; shift ;;
    --env) ENV_JSON=$(jq -c --arg e "$2" 'if ($e|startswith("PATH=")) then map(select(startswith("PATH=")|not)) else . end + [$e]' <<<"$ENV_JSON"); shift 2 ;;
    --entrypoint) EP_JSON=$(jq -cn --arg e "$2" '[$e]'); shift 2 ;;
    --port) PORTS=$(jq -c --arg p "$2" '. + {($p): {}}' <<<"$PORTS"); shift 2 ;;
    --annotation) ANN=$(jq -c --arg a "$2" '. + {($a|split("=")[0]): ($a|split("=")[1:]|join("="))}' <<<"$ANN"); shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
CMD_JSON=$(jq -cn '$ARGS.positional' --args -- "$@")
# no CMD: a shell, unless an entrypoint runs without arguments
[ "$CMD_JSON" = "[]" ] && [ "$EP_JSON" = null ] && CMD_JSON='["/bin/sh"]'
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/blobs/sha256"
# 1. layer (deterministic tar of the rootfs)
OWNERS=(--owner=0 --group=0); [ $KEEP = 1 ] && OWNERS=()
tar --sort=name --mtime=@0 "${OWNERS[@]}" --numeric-owner -C "$ROOTFS" -cf "$W/layer.tar" .
DIFFID=$(sha256sum "$W/layer.tar" | cut -d' ' -f1)
if [ $GZIP = 1 ]; then
  gzip -n -1 "$W/layer.tar"; LAYER="$W/layer.tar.gz"; LMT=application/vnd.oci.image.layer.v1.tar+gzip
else LAYER="$W/layer.tar"; LMT=application/vnd.oci.image.layer.v1.tar; fi
LDIG=$(sha256sum "$LAYER" | cut -d' ' -f1); LSIZE=$(stat -c %s "$LAYER")
mv "$LAYER" "$W/blobs/sha256/$LDIG"
# 2. config
jq -cn --arg d "sha256:$DIFFID" --argjson cmd "$CMD_JSON" --argjson env "$ENV_JSON" --argjson ep "$EP_JSON" --argjson ports "$PORTS" '{
  architecture:"amd64", os:"linux",
  config:({Env:$env, Cmd:$cmd, WorkingDir:"/"} + (if $ep then {Entrypoint:$ep} else {} end)
    + (if $ports == {} then {} else {ExposedPorts:$ports} end)),
  rootfs:{type:"layers", diff_ids:[$d]},
  history:[{created_by:"mkimage.sh"}] }' > "$W/config.json"
CDIG=$(sha256sum "$W/config.json" | cut -d' ' -f1); CSIZE=$(stat -c %s "$W/config.json")
mv "$W/config.json" "$W/blobs/sha256/$CDIG"
# 3. manifest
jq -cn --arg c "sha256:$CDIG" --argjson cs $CSIZE --arg l "sha256:$LDIG" --argjson ls $LSIZE --arg lmt $LMT '{
  schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
  config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$c, size:$cs},
  layers:[{mediaType:$lmt, digest:$l, size:$ls}] }' > "$W/manifest.json"
MDIG=$(sha256sum "$W/manifest.json" | cut -d' ' -f1); MSIZE=$(stat -c %s "$W/manifest.json")
mv "$W/manifest.json" "$W/blobs/sha256/$MDIG"
# 4. index + layout: one entry per ref; io.containerd.image.name gives `ctr images import` the
#    full name, org.opencontainers.image.ref.name the tag (skopeo's oci-archive:FILE:TAG)
jq -cn --arg m "sha256:$MDIG" --argjson ms $MSIZE --arg refs "$REF" --argjson ann "$ANN" '{
  schemaVersion:2, mediaType:"application/vnd.oci.image.index.v1+json",
  manifests:[$refs|split(",")[]|{mediaType:"application/vnd.oci.image.manifest.v1+json", digest:$m, size:$ms,
    platform:{architecture:"amd64", os:"linux"},
    annotations:($ann + {"io.containerd.image.name":., "org.opencontainers.image.ref.name":(split(":")|last)})}] }' > "$W/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$W/oci-layout"
tar -C "$W" -cf "$OUT" oci-layout index.json blobs
echo "built $OUT ref=$REF manifest=sha256:$MDIG layer=$LSIZE bytes"
