#!/usr/bin/env bash
# Build a local Debian base image (python3 + venv + pip) without any container registry.
#
# For machines that reach Debian mirrors but no registry (docker pull fails): debootstrap
# a minimal rootfs of the host's own release from the host's own apt mirror, then
# `docker import` it. The image then stands in for python:3.12-slim as BASE_IMAGE.
#
# Caching, cheapest first:
#   1. the image already exists            -> nothing to do (FORCE=1 rebuilds)
#   2. a rootfs tarball is in the cache dir -> `docker import` it (a few seconds)
#   3. otherwise debootstrap (minutes), store the tarball, import it
#
# Environment:
#   RLM_JOBS_BASE_IMAGE      image to create          (default rlm-jobs-base:local)
#   RLM_JOBS_CACHE_DIR       where the tarball lives  (default ${XDG_CACHE_HOME:-~/.cache}/rlm-jobs)
#   RLM_JOBS_DEBIAN_MIRROR   override the mirror read from /etc/apt/sources.list*
#   RLM_JOBS_DEBIAN_SUITE    override the release     (default: VERSION_CODENAME of the host)
#   FORCE=1                  rebuild the rootfs even if cached
set -euo pipefail

IMAGE="${RLM_JOBS_BASE_IMAGE:-rlm-jobs-base:local}"
CACHE_DIR="${RLM_JOBS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rlm-jobs}"
FORCE="${FORCE:-0}"

log() { printf 'build-base-image: %s\n' "$*" >&2; }

if [ "$FORCE" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists; nothing to do (FORCE=1 rebuilds)"
    exit 0
fi

# shellcheck disable=SC1091
. /etc/os-release
SUITE="${RLM_JOBS_DEBIAN_SUITE:-${VERSION_CODENAME:-}}"
if [ -z "$SUITE" ]; then
    log "cannot tell the host's Debian release (ID=${ID:-?}); set RLM_JOBS_DEBIAN_SUITE" \
        "and RLM_JOBS_DEBIAN_MIRROR"
    exit 1
fi
ARCH="$(dpkg --print-architecture)"
TARBALL="$CACHE_DIR/base-$SUITE-$ARCH.tar"

# apt_sources: print "URI SUITE" for every enabled `deb` entry with the main component,
# from both the one-line (*.list) and deb822 (*.sources) formats. Only files apt itself
# reads are considered (a *.list.disabled file is ignored, as apt does).
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                uri = $i; suite = $(i + 1); main = 0
                for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
                if (main) print uri, suite
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'function flush() {
                 if (types ~ /(^| )deb( |$)/ && comps ~ /(^| )main( |$)/ && enabled != "no") {
                     n = split(uris, u, " "); m = split(suites, s, " ")
                     for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b]
                 }
                 types = uris = suites = comps = ""; enabled = "yes"
             }
             BEGIN { enabled = "yes" }
             /^#/ { next }
             /^[[:space:]]*$/ { flush(); next }
             { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
               if (key == "types") types = $0
               else if (key == "uris") uris = $0
               else if (key == "suites") suites = $0
               else if (key == "components") comps = $0
               else if (key == "enabled") enabled = tolower($0) }
             END { flush() }' "$f"
    done
}

import_tarball() {
    local start=$SECONDS
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap $SUITE $ARCH minbase + python3 (ops/build-base-image.sh)" \
        "$TARBALL" "$IMAGE" >/dev/null
    log "imported $TARBALL as $IMAGE in $((SECONDS - start))s"
}

if [ "$FORCE" != 1 ] && [ -s "$TARBALL" ]; then
    log "reusing cached rootfs $TARBALL"
    import_tarball
    exit 0
fi

for tool in debootstrap docker tar; do
    command -v "$tool" >/dev/null || { log "$tool not found (apt-get install -y $tool)"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }

SOURCES="$(apt_sources | sort -u)"
MIRROR="${RLM_JOBS_DEBIAN_MIRROR:-$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$SOURCES")}"
if [ -z "$MIRROR" ]; then
    log "no apt source for suite $SUITE in /etc/apt; set RLM_JOBS_DEBIAN_MIRROR"
    exit 1
fi

ROOTFS="$(mktemp -d /var/tmp/rlm-jobs-rootfs.XXXXXX)"
chmod 755 "$ROOTFS"  # becomes the image's "/": non-root users must traverse it
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" && umount -l "$ROOTFS/$m"
    done
    rm -rf "$ROOTFS" "$ROOTFS".*.log
}
trap cleanup EXIT

start=$SECONDS
log "debootstrap $SUITE ($ARCH) from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --arch="$ARCH" \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1 || {
    log "debootstrap failed; last lines of its log:"
    tail -n 20 "$ROOTFS.debootstrap.log" >&2
    exit 1
}
rm -f "$ROOTFS.debootstrap.log"
log "debootstrap took $((SECONDS - start))s"

# Security and point-release updates, from the same mirrors the host uses.
{
    awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" {
        print "deb " $1 " " $2 " main" }' <<<"$SOURCES"
} >"$ROOTFS/etc/apt/sources.list"
# Trust the same extra CAs as the host that builds the image: behind a TLS-intercepting
# proxy, pip inside `docker build` then verifies the registry the way pip on the host does.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi
upd=$SECONDS
mount -t proc proc "$ROOTFS/proc"
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get -q update && apt-get -qy upgrade && apt-get clean && update-ca-certificates' \
    >"$ROOTFS.upgrade.log" 2>&1 || {
    log "apt-get upgrade in the rootfs failed; last lines of its log:"
    tail -n 20 "$ROOTFS.upgrade.log" >&2
    exit 1
}
umount "$ROOTFS/proc"
rm -f "$ROOTFS.upgrade.log"
log "security updates took $((SECONDS - upd))s"

# Slim it: no package lists, docs, man pages or caches in the image.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
: >"$ROOTFS/etc/resolv.conf"

mkdir -p "$CACHE_DIR"
tar --numeric-owner --xattrs -C "$ROOTFS" -cf "$TARBALL.partial" .
mv "$TARBALL.partial" "$TARBALL"
log "rootfs $(du -h "$TARBALL" | cut -f1) cached at $TARBALL; total $((SECONDS - start))s"
import_tarball
