#!/usr/bin/env bash
# Builds Aerie's container images without pulling anything from a registry.
#
#   deploy/docker/build.sh [base|cpu|cuda|etcd|all]... [--rebuild] [--refresh]
#
#   base  aerie-base:bookworm  Debian bookworm (minbase) made here with debootstrap
#                              and loaded with `docker import`
#   cpu   aerie:cpu            base + the `aerie` binary + the shipped EAGLE head
#   cuda  aerie:cuda           cpu's layout + CUDA runtime, cuBLAS, NVRTC and NCCL
#                              shared libraries unpacked from NVIDIA's PyPI wheels
#   etcd  aerie-etcd:bookworm  base + Debian's etcd-server, installed with apt during
#                              the build (used by tests/container)
#   all   base, cpu, etcd and cuda
#
# With no target it builds base and cpu. An image that exists and was made
# from the same inputs (recorded in its io.aerie.inputs label: the base
# image's id, the Dockerfile, the binary, the head, the wheel pins) is left
# alone, so after `cargo build` a plain rerun repackages just the new binary.
# --rebuild builds the named targets again regardless (a missing base is
# always built first). Downloads are cached under $AERIE_DOCKER_CACHE
# (default ~/.cache/aerie/docker): the bootstrapped root filesystem as a
# tarball, the CUDA wheels and the libraries taken out of them. --refresh
# throws away the caches the named targets use and downloads again (it
# implies --rebuild).
#
# Environment:
#   AERIE_BIN            the binary to package (default target/release/aerie)
#   AERIE_STRIP=0        package it with its debug line tables (default: strip them)
#   AERIE_DOCKER_CACHE   cache directory (default ~/.cache/aerie/docker)
#   AERIE_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   AERIE_BASE_IMAGE     what the cpu/cuda/etcd Dockerfiles build FROM (default
#                        aerie-base:bookworm; a local debian:bookworm-slim works too,
#                        and then no base image is bootstrapped)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${AERIE_DOCKER_CACHE:-$HOME/.cache/aerie/docker}
mirror=${AERIE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
bin=${AERIE_BIN:-$repo/target/release/aerie}
head_dir=$repo/models/smollm2-135m-eagle
suite=bookworm

BASE_TAG=aerie-base:bookworm
CPU_TAG=aerie:cpu
CUDA_TAG=aerie:cuda
ETCD_TAG=aerie-etcd:bookworm
base_image=${AERIE_BASE_IMAGE:-$BASE_TAG}

# Packages on top of debootstrap's minbase. `ldd target/release/aerie` lists
# libc.so.6, libm.so.6 (both libc6) and libgcc_s.so.1 (libgcc-s1); the CUDA
# image's NCCL and NVRTC builtins also need libstdc++.so.6 (libstdc++6).
# minbase has all three already; naming them keeps that true if minbase
# changes. ca-certificates lets apt and any HTTPS client verify servers.
base_include=ca-certificates,libc6,libgcc-s1,libstdc++6

# CUDA 12.9 user-space libraries. The driver (libcuda.so.1) is not here: on a
# GPU host the NVIDIA container toolkit mounts the host's copy.
cuda_wheels=(
  nvidia-cuda-runtime-cu12==12.9.79
  nvidia-cublas-cu12==12.9.1.4
  nvidia-cuda-nvrtc-cu12==12.9.86
  nvidia-nccl-cu12==2.27.5
)

# Bump when the set of libraries kept from the wheels changes (see cuda_libs).
cuda_lib_selection=2

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

rebuild=0
refresh=0
targets=()
for a in "$@"; do
  case "$a" in
    base|cpu|cuda|etcd) targets+=("$a") ;;
    all) targets+=(base cpu etcd cuda) ;;
    --rebuild) rebuild=1 ;;
    --refresh) refresh=1; rebuild=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$a'" ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(base cpu)

command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running, and may $(id -un) use it?)"

# The legacy builder resolves FROM against local images and never pulls unless
# asked to. Client 23+ wants BuildKit by default and fails without the buildx
# plugin, so choose the legacy builder explicitly when buildx is absent.
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1e6}'; }

mkdir -p "$cache/tmp"
work=$(mktemp -d "$cache/tmp/build.XXXXXX")
cleanup() {
  # A failed debootstrap can leave /proc or /sys mounted inside its root; never
  # delete through a mount point.
  if [ -n "${work:-}" ] && [ -d "$work" ]; then
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT

timed() { # label, command...: runs the command and reports how long it took
  local label=$1 t0=$SECONDS; shift
  "$@"
  say "$label took $((SECONDS - t0)) s"
}

docker_build() { # target tag dockerfile context
  local t=$1 tag=$2 file=$3 ctx=$4
  local log=$work/docker-build-$t.log
  # The full build output is shown only when the build fails.
  docker build --force-rm -t "$tag" -f "$file" --build-arg "BASE=$base_image" \
    --label "io.aerie.inputs=$(inputs_of "$t")" "$ctx" >"$log" 2>&1 \
    || { grep -v -e '^DEPRECATED' -e '^ *BuildKit is currently disabled' -e '^ *environment-variable' "$log" | tail -n 40 >&2
         die "docker build of $tag failed (its last lines are above)"; }
}

# A short digest of everything an image is made from (the base image's id,
# the Dockerfile, and the files copied in).
inputs_of() {
  local base_id
  base_id=$(docker image inspect -f '{{.Id}}' "$base_image" 2>/dev/null || echo none)
  {
    echo "base=$base_id"
    case "$1" in
      base) echo "rootfs=$(cat "$rootfs_tar.info" 2>/dev/null)" ;;
      cpu|cuda)
        sha256sum "$here/Dockerfile.$1"
        if [ -f "$bin" ]; then sha256sum "$bin"; fi
        echo "strip=${AERIE_STRIP:-1}"
        find "$head_dir" -type f -print0 | sort -z | xargs -0 sha256sum
        if [ "$1" = cuda ]; then printf '%s\n' "${cuda_wheels[@]}" "libs=$cuda_lib_selection"; fi ;;
      etcd) sha256sum "$here/Dockerfile.etcd" ;;
    esac
    true
  } 2>/dev/null | sed "s#$repo/##; s#$cache/##" | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------- base ------

rootfs_tar=$cache/rootfs-$suite-minbase.tar

make_rootfs() {
  command -v debootstrap >/dev/null || die "debootstrap is not installed (Debian: apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root (run build.sh as root, or use AERIE_BASE_IMAGE=debian:bookworm-slim with a local copy of that image)"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring is missing (apt-get install debian-archive-keyring)"
  local root=$work/rootfs
  say "debootstrap $suite (minbase + $base_include) from $mirror"
  debootstrap --variant=minbase --include="$base_include" --keyring="$keyring" \
    "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 30 "$cache/debootstrap.log" >&2; die "debootstrap failed (the lines above end $cache/debootstrap.log)"; }

  # apt sources for images that install more packages (the etcd image does).
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
  # Keep later installs small: no recommends, no docs or translations, no .debs left behind.
  cat >"$root/etc/apt/apt.conf.d/90aerie-lean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/90aerie-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
  chroot "$root" apt-get clean
  # Documentation (license files stay), caches, logs and anything Docker
  # supplies itself at run time (/dev, /etc/hostname, /etc/resolv.conf).
  find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/* \
         "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
         "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
         "$root"/var/log/* "$root"/tmp/* "$root"/dev/* "$root"/run/*
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  [ -e "$root/etc/machine-id" ] && : >"$root/etc/machine-id"

  tar --numeric-owner -C "$root" -cf "$rootfs_tar.partial" .
  mv "$rootfs_tar.partial" "$rootfs_tar"
  {
    echo "suite=$suite"; echo "mirror=$mirror"; echo "include=$base_include"
    echo "created=$(date -u +%FT%TZ)"
  } >"$rootfs_tar.info"
  rm -rf --one-file-system "$root"
  say "cached the root filesystem: $rootfs_tar ($(du -m "$rootfs_tar" | cut -f1) MB)"
}

build_base() {
  if [ "$refresh" = 1 ] || [ ! -f "$rootfs_tar" ]; then
    timed "debootstrap" make_rootfs
  else
    say "reusing the cached root filesystem $rootfs_tar"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=aerie-base org.opencontainers.image.description=Debian-$suite-minbase-from-debootstrap" \
    "$rootfs_tar" "$BASE_TAG" >/dev/null
}

# ------------------------------------------------------------ contexts ------

# A fresh build context holding exactly what a Dockerfile copies.
app_context() { # dir dockerfile
  local ctx=$1
  [ -x "$bin" ] || die "$bin does not exist: build it first (cargo build --release -p aerie-launcher) or set AERIE_BIN"
  [ -f "$head_dir/config.json" ] && [ -f "$head_dir/model.safetensors" ] \
    || die "the shipped EAGLE head is missing from $head_dir"
  mkdir -p "$ctx/models"
  cp "$here/$2" "$ctx/Dockerfile"
  # The release profile keeps line tables for backtraces (about 80 MB of
  # DWARF); the image drops them and keeps the symbol table, so a panic's
  # backtrace still names functions. AERIE_STRIP=0 packages the binary as is.
  if [ "${AERIE_STRIP:-1}" != 0 ] && command -v strip >/dev/null; then
    strip --strip-debug -o "$ctx/aerie" "$bin" || die "strip --strip-debug $bin failed"
  else
    cp "$bin" "$ctx/aerie"
  fi
  chmod 0755 "$ctx/aerie"
  cp -r "$head_dir" "$ctx/models/"
  chmod -R a+rX "$ctx/models"
}

# CUDA libraries: download the wheels once, unpack them once, keep only the
# shared objects.
cuda_libs() { # prints the directory holding the .so files
  local wdir=$cache/wheels key libdir
  key=$(printf '%s\n' "${cuda_wheels[@]}" "libs=$cuda_lib_selection" | sha256sum | cut -c1-12)
  libdir=$cache/cuda-lib-$key
  if [ "$refresh" = 1 ]; then rm -rf "$libdir"; fi
  if [ -f "$libdir/.complete" ]; then echo "$libdir"; return; fi

  command -v python3 >/dev/null || die "python3 is needed to download and unpack the CUDA wheels"
  python3 -m pip --version >/dev/null 2>&1 || die "pip is needed to download the CUDA wheels (apt-get install python3-pip)"
  mkdir -p "$wdir"
  local spec name ver whl missing=()
  for spec in "${cuda_wheels[@]}"; do
    name=${spec%%==*}; ver=${spec#*==}
    whl=$(ls "$wdir"/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -1 || true)
    if [ "$refresh" = 1 ] && [ -n "$whl" ]; then rm -f "$whl"; whl=; fi
    [ -n "$whl" ] || missing+=("$spec")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "downloading ${missing[*]} from PyPI (about 1 GB, once)"
    # Wheels for any glibc up to bookworm's 2.36, whatever the host's Python
    # is (older pip does not widen one --platform to the older manylinux tags).
    local plats=(--platform "manylinux2014_$(uname -m)") g
    for g in $(seq 17 36); do plats+=(--platform "manylinux_2_${g}_$(uname -m)"); done
    python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --no-cache-dir -q \
      "${plats[@]}" -d "$wdir" "${missing[@]}" >&2 || die "pip download of the CUDA wheels failed (is PyPI reachable?)"
  fi

  local tmp=$work/cuda-unpack
  rm -rf "$tmp" "$libdir.partial"
  mkdir -p "$tmp" "$libdir.partial"
  for spec in "${cuda_wheels[@]}"; do
    name=${spec%%==*}; ver=${spec#*==}
    whl=$(ls "$wdir"/"${name//-/_}"-"$ver"-*.whl | head -1)
    say "unpacking $(basename "$whl")"
    rm -rf "$tmp"/*
    python3 -m zipfile -e "$whl" "$tmp" || die "cannot unpack $whl"
    # Wheels carry no symlinks: each library is one regular file named by its
    # soname. Left out: NVRTC's .alt variants (a second build of the same
    # library, about 115 MB) and libnvblas (a drop-in replacement for CPU
    # BLAS libraries); Aerie loads neither.
    find "$tmp" -path '*/lib/*' -name '*.so*' -type f ! -name '*.alt.so*' ! -name 'libnvblas.so*' \
      -exec cp {} "$libdir.partial/" \;
  done
  rm -rf "$tmp"
  ls "$libdir.partial"/libcudart.so.* "$libdir.partial"/libcublas.so.* "$libdir.partial"/libcublasLt.so.* \
     "$libdir.partial"/libnvrtc.so.* "$libdir.partial"/libnccl.so.* >/dev/null \
    || die "a CUDA library is missing after unpacking the wheels"
  chmod 0644 "$libdir.partial"/*
  printf '%s\n' "${cuda_wheels[@]}" "libs=$cuda_lib_selection" >"$libdir.partial/.complete"
  rm -rf "$libdir"
  mv "$libdir.partial" "$libdir"
  # Sets unpacked for other pins are of no further use.
  find "$cache" -maxdepth 1 -name 'cuda-lib-*' ! -name "$(basename "$libdir")" -exec rm -rf {} +
  echo "$libdir"
}

# ------------------------------------------------------------- targets ------

ensure_base() {
  [ "$base_image" = "$BASE_TAG" ] || { image_exists "$base_image" || die "AERIE_BASE_IMAGE=$base_image is not a local image (nothing is pulled)"; return; }
  image_exists "$BASE_TAG" || { say "building $BASE_TAG first"; timed "$BASE_TAG" build_base; }
}

build_target() {
  local t=$1 tag ctx
  case "$t" in
    base) tag=$BASE_TAG ;; cpu) tag=$CPU_TAG ;; cuda) tag=$CUDA_TAG ;; etcd) tag=$ETCD_TAG ;;
  esac
  # What went into an image is recorded in its io.aerie.inputs label, so a
  # rebuilt binary or an edited Dockerfile is noticed without --rebuild.
  local want have=
  want=$(inputs_of "$t")
  image_exists "$tag" && have=$(docker image inspect -f '{{index .Config.Labels "io.aerie.inputs"}}' "$tag" 2>/dev/null || true)
  if [ "$rebuild" = 0 ] && image_exists "$tag"; then
    if [ "$t" = base ] || [ "$have" = "$want" ]; then
      say "$tag is up to date ($(image_size "$tag")); --rebuild builds it again"
      return
    fi
    say "$tag is out of date (its base image, Dockerfile or copied files changed): building it again"
  fi
  local t0=$SECONDS old_id=
  old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  case "$t" in
    base)
      build_base ;;
    cpu)
      ensure_base
      ctx=$work/ctx-cpu
      app_context "$ctx" Dockerfile.cpu
      docker_build cpu "$tag" "$ctx/Dockerfile" "$ctx" ;;
    cuda)
      ensure_base
      local libs
      libs=$(cuda_libs)
      ctx=$work/ctx-cuda
      app_context "$ctx" Dockerfile.cuda
      mkdir -p "$ctx/cuda-lib"
      cp -l "$libs"/*.so* "$ctx/cuda-lib/" 2>/dev/null || cp "$libs"/*.so* "$ctx/cuda-lib/"
      docker_build cuda "$tag" "$ctx/Dockerfile" "$ctx" ;;
    etcd)
      ensure_base
      ctx=$work/ctx-etcd
      mkdir -p "$ctx"
      cp "$here/Dockerfile.etcd" "$ctx/Dockerfile"
      docker_build etcd "$tag" "$ctx/Dockerfile" "$ctx" ;;
  esac
  rm -rf "${ctx:-/nonexistent}"
  # The image this one replaced, if nothing else names or uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ] \
     && [ -z "$(docker image inspect -f '{{join .RepoTags " "}}' "$old_id" 2>/dev/null)" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  say "built $tag in $((SECONDS - t0)) s ($(image_size "$tag"))"
}

done_targets=" "
for t in "${targets[@]}"; do
  case "$done_targets" in *" $t "*) continue ;; esac
  build_target "$t"
  done_targets+="$t "
done

echo
docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' \
  | awk 'NR == 1 || $1 ~ /^aerie(-base|-etcd)?:/'
