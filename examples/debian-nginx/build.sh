#!/bin/sh
# Build a stock static web server from Debian as a local image, offline:
#   rolling-sandbox-example/debian-nginx:bookworm, FROM the sandbox's own base image, which holds
#   Debian's nginx-light package with its stock config (see Dockerfile).
# Run from anywhere; PYTHON is the interpreter with the sandbox installed (default .venv/bin/python).
# Remove it with: docker image rm rolling-sandbox-example/debian-nginx:bookworm
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
cd "$repo"
base=$("$py" -c "from sandbox.fleet.images import ensure_images; print(ensure_images(__import__('docker').from_env()).base)")
package=$(docker run --rm "$base" dpkg-query -W -f '${Version}' nginx-light)
docker build --quiet --build-arg "BASE=$base" \
    --label io.rolling-sandbox.managed=true --label io.rolling-sandbox.role=app-image \
    --label io.rolling-sandbox.project=example-debian-nginx --label io.rolling-sandbox.version=bookworm \
    --label "io.rolling-sandbox.example.package=nginx-light $package" \
    -t rolling-sandbox-example/debian-nginx:bookworm "$here" >/dev/null
echo "built rolling-sandbox-example/debian-nginx:bookworm (Debian nginx-light $package)"
