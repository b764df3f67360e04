#!/usr/bin/env bash
# Build the container images nbpipe's container tests use, from Debian's
# packages and PyPI alone (no container registry is needed or contacted),
# and set podman up so that a plain `podman run` works.  Needs root.
# Safe to run again: an image that already exists is kept (--rebuild
# rebuilds all three).
#
#   localhost/nbpipe-test        Python 3.11 with papermill, IPython,
#                                ipykernel, cloudpickle, numpy, matplotlib
#                                (scripts/test-image/Containerfile)
#   localhost/nbpipe-test-bare   the same Debian base without those packages:
#                                an image that lacks what nbpipe needs
#   localhost/nbpipe-test-empty  a single file and no Python at all
#
# nbpipe itself is not installed in any image: it mounts its own package
# read-only into the container at run time.
#
# The base is a minimal Debian rootfs made by mmdebstrap and loaded with
# `podman import`, so no base image is pulled from a registry.
set -euo pipefail

TEST_IMAGE=localhost/nbpipe-test
BARE_IMAGE=localhost/nbpipe-test-bare
EMPTY_IMAGE=localhost/nbpipe-test-empty
SUITE=bookworm
HERE=$(cd "$(dirname "$0")" && pwd)
CONTAINERFILE=$HERE/test-image/Containerfile
CONF=/etc/containers/containers.conf
# Marks the config as ours: a re-run may rewrite it, but a containers.conf
# without it belongs to the user and is never touched.
MARKER="# written by nbpipe scripts/build-test-image.sh"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
# iptables: podman only suggests it, but the default (bridge) network of a
# root container needs it.  charliecloud-runtime: ch-run, for the test that
# runs an app in a directory image made from the test image.
PKGS=(podman runc iptables mmdebstrap charliecloud-runtime)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { echo "build-test-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    echo "usage: $0 [--rebuild]" >&2
    exit 2
}

REBUILD=
case "${1-}" in
    "") ;;
    --rebuild) REBUILD=1 ;;
    *) usage ;;
esac

pkgs_missing() {
    local p status
    for p in "${PKGS[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || echo "$p"
    done
}

install_pkgs() {
    local missing aptlog
    missing=$(pkgs_missing)
    if [[ -z $missing ]]; then return 0; fi
    command -v apt-get >/dev/null 2>&1 || die "missing $(echo $missing) and no apt-get to install them"
    log "installing: $(echo $missing)"
    aptlog=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    # Try the lists already on the machine first; a fresh machine has none, and
    # stale ones point at versions the mirror dropped: then update once.
    # shellcheck disable=SC2086
    if ! apt-get install -y -qq --no-install-recommends $missing >>"$aptlog" 2>&1; then
        apt-get -qq update >>"$aptlog" 2>&1 || { tail -n 30 "$aptlog" >&2; die "apt-get update failed"; }
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >>"$aptlog" 2>&1 \
            || { tail -n 30 "$aptlog" >&2; die "apt-get install failed"; }
    fi
    rm -f "$aptlog"
}

# Podman's defaults assume systemd and a high open-files limit.  Machines
# without systemd (containers, CI runners) need the cgroupfs manager and the
# file event log; and podman asks runc for a nofile limit above the hard limit
# these machines give root (20000 here), which runc is refused ("error setting
# rlimits"), so the containers get limits within it.  Podman reads this system
# file with no environment variable; CONTAINERS_CONF, if set, replaces it.
write_conf() {
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "keeping the existing $CONF (not ours); if podman run fails below, add to it:"
        log '  [containers] default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]'
        log '  [engine] runtime = "runc", cgroup_manager = "cgroupfs", events_logger = "file"'
        return 0
    fi
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF.tmp" <<EOF
$MARKER
# Lets plain \`podman run\` work as root without systemd (see that script).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    mv "$CONF.tmp" "$CONF"
}

# vfs (podman's fallback where the kernel cannot do overlay) copies the whole
# image for every container: 4 to 18 s per launch of the 466 MB test image,
# against 0.3 s on overlay.  Say so rather than let the tests crawl.
check_storage() {
    local driver
    driver=$(podman info --format '{{.Store.GraphDriverName}}') || die "podman info failed"
    log "podman $(podman version --format '{{.Client.Version}}'), storage driver $driver"
    if [[ $driver != overlay ]]; then
        log "WARNING: storage driver $driver copies each image per container; container tests will be slow"
    fi
}

image_exists() { podman image exists "$1"; }

# What the image installs: nbpipe's task runtime, and what the HEP example's
# setup cell imports.  Pinned to the versions of the Python that runs this
# script (CI's environment) where it has them, so that an app in the image
# prints, plots and pickles exactly as on the host; unpinned otherwise.
PACKAGES=(papermill ipython ipykernel nbformat nbclient cloudpickle numpy matplotlib uproot awkward)
pinned_packages() {
    local python
    python=$(command -v python || command -v python3 || true)
    if [[ -z $python ]]; then echo "${PACKAGES[*]}"; return; fi
    "$python" - "${PACKAGES[@]}" <<'PY'
import sys
from importlib import metadata
out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        out.append(name)
print(" ".join(out))
PY
}

# The test image is current when it was built with the same pins.
test_image_current() {
    image_exists "$TEST_IMAGE" && [[ $(podman image inspect --format \
        '{{index .Config.Labels "nbpipe.packages"}}' "$TEST_IMAGE") == "$PINS" ]]
}

build_bare() {
    local work=$1
    log "making a minimal $SUITE rootfs with mmdebstrap"
    # minbase + python3: about 180 MB.  Docs, man pages and translations are
    # left out; mmdebstrap removes the apt lists and cache itself.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$SUITE" "$work/rootfs.tar" >"$work/mmdebstrap.log" 2>&1 \
        || { tail -n 30 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    podman import --quiet --change 'CMD ["python3"]' "$work/rootfs.tar" "$BARE_IMAGE" >/dev/null
    rm -f "$work/rootfs.tar"
}

build_test() {
    local ca=()
    log "building $TEST_IMAGE (pip install from PyPI)"
    # Behind a TLS-inspecting proxy, PyPI's certificate is signed by a CA only
    # the host trusts: let pip use the host's bundle during the build (it is
    # mounted, not copied, so the image keeps Debian's own).
    if [[ -s $HOST_CA ]]; then
        ca=(--volume "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
    fi
    # --network=host: pip needs the network, and this avoids depending on a
    # container network (CNI/netavark) being set up.  --pull=never: the base
    # is local.  --layers=false: one layer, no intermediate images left over.
    podman build --quiet --pull=never --network=host --layers=false "${ca[@]}" \
        --build-arg PACKAGES="$PINS" --label nbpipe.packages="$PINS" \
        -f "$CONTAINERFILE" -t "$TEST_IMAGE" "$HERE/test-image" >/dev/null
}

build_empty() {
    local work=$1
    mkdir -p "$work/empty/etc"
    echo "nbpipe test image without Python" >"$work/empty/etc/nbpipe-test-empty"
    tar -C "$work/empty" -cf "$work/empty.tar" etc
    podman import --quiet "$work/empty.tar" "$EMPTY_IMAGE" >/dev/null
}

# A failure here is a podman set-up problem, not an image problem: say so.
verify() {
    local t0 t1 ms
    podman run --rm "$TEST_IMAGE" python3 -c \
        "import papermill, IPython, ipykernel, nbclient, cloudpickle, numpy, matplotlib, uproot" \
        || die "$TEST_IMAGE does not run or lacks packages (see podman's message above)"
    t0=$(date +%s%N)
    podman run --rm "$TEST_IMAGE" true || die "podman run --rm $TEST_IMAGE true failed"
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    log "podman run --rm $TEST_IMAGE true: ${ms} ms"
}

main() {
    local start=$SECONDS img old
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, writes $CONF)"
    install_pkgs
    write_conf
    check_storage

    if [[ -n $REBUILD ]]; then
        for img in "$TEST_IMAGE" "$BARE_IMAGE" "$EMPTY_IMAGE"; do
            if image_exists "$img"; then podman rmi "$img" >/dev/null; fi
        done
    fi
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    if image_exists "$BARE_IMAGE"; then log "$BARE_IMAGE exists, kept"; else build_bare "$WORK"; fi
    PINS=$(pinned_packages)
    if test_image_current; then
        log "$TEST_IMAGE exists with $PINS, kept"
    else
        old=$(podman image inspect --format '{{.Id}}' "$TEST_IMAGE" 2>/dev/null || true)
        build_test
        # The image it replaces (other pins): removed unless a container still uses it.
        if [[ -n $old ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
    fi
    if image_exists "$EMPTY_IMAGE"; then log "$EMPTY_IMAGE exists, kept"; else build_empty "$WORK"; fi

    verify
    podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
        | grep -E "^localhost/nbpipe-test(-bare|-empty)?:" >&2
    log "done in $(( SECONDS - start )) s"
}

main
