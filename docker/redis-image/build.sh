#!/bin/sh
# Build keyshift's local Redis image offline from the host's redis-server,
# exactly as the harness does when the image is missing
# (harness/src/backend/image.rs). Useful to pre-build it in a CI setup step.
# Usage: docker/redis-image/build.sh [IMAGE]   (default keyshift/redis:local)
set -eu
image=${1:-keyshift/redis:local}
here=$(cd "$(dirname "$0")" && pwd)
bin=$(command -v redis-server) || {
    echo "no redis-server on PATH: apt-get install -y redis-server" >&2; exit 1; }
version=$("$bin" --version)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/data" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
# -L: /usr/bin/redis-server is often a symlink; the copy keeps the name.
cp -L "$bin" "$ctx/rootfs/usr/local/bin/redis-server"
# Every library ldd lists, at its absolute path, the dynamic loader included.
ldd "$bin" | awk '/=> not found/ { print "missing library: " $1 > "/dev/stderr"; exit 1 }
    /=> \// { print $3; next } /^[[:space:]]*\// { print $1 }' > "$ctx/libs"
while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done < "$ctx/libs"
cp "$here/Dockerfile" "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build --label "keyshift.redis-version=$version" -t "$image" "$ctx"
