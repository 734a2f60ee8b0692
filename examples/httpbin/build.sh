#!/bin/sh
# Build two versions of httpbin as local images, offline except for the wheels fetched here:
#   rolling-sandbox-example/httpbin:0.10.1 and :0.10.2, FROM the sandbox's own base image.
# Run from anywhere; PYTHON is the interpreter with the sandbox installed (default .venv/bin/python).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
cd "$repo"
base=$("$py" -c "from sandbox.fleet.images import ensure_images; print(ensure_images(__import__('docker').from_env()).base)")
for version in 0.10.1 0.10.2; do
    ctx="$here/build/$version"
    mkdir -p "$ctx/wheels"
    "$py" -m pip download --quiet --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
        -d "$ctx/wheels" "httpbin==$version" gunicorn "werkzeug<2.3" "flask<2.3"  # httpbin 0.10 and flasgger need the Flask 2.2 API
    cp "$here/Dockerfile" "$ctx/Dockerfile"
    docker build --quiet --build-arg "BASE=$base" \
        --label io.rolling-sandbox.managed=true --label io.rolling-sandbox.role=app-image \
        --label io.rolling-sandbox.project=example-httpbin --label "io.rolling-sandbox.version=$version" \
        -t "rolling-sandbox-example/httpbin:$version" "$ctx"
done
echo "built rolling-sandbox-example/httpbin:0.10.1 and :0.10.2"
