#!/bin/sh
# Build the two releases of the orders example as local images, offline except for the wheels fetched
# here: rolling-sandbox-example/alembic-orders:v1 and :v2, FROM the sandbox's own base image.
#   v1 ships Alembic revision 0001 (the orders table); v2 ships 0001 and 0002 (adds customer and status).
# An image whose inputs (this script, the files it copies, the pinned wheels, the base image) are unchanged is kept:
# its label io.rolling-sandbox.inputs holds their hash, and a second run fetches and builds nothing.
# Run from anywhere; PYTHON is the interpreter with the sandbox installed (default .venv/bin/python).
# Remove them with: docker image rm rolling-sandbox-example/alembic-orders:v1 rolling-sandbox-example/alembic-orders:v2
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
repository=rolling-sandbox-example/alembic-orders
cd "$repo"
base=$("$py" -c "from sandbox.fleet.images import ensure_images; print(ensure_images(__import__('docker').from_env()).base)")

revisions() {  # the Alembic revisions each release ships
    case "$1" in
        v1) echo 0001 ;;
        v2) echo 0001 0002 ;;
    esac
}

for version in v1 v2; do
    ref="$repository:$version"
    files="Dockerfile requirements.txt app/orders.py app/alembic.ini app/migrations/env.py app/migrations/script.py.mako $version/release.py"
    for rev in $(revisions "$version"); do
        files="$files $(cd "$here" && echo app/migrations/versions/${rev}_*.py)"
    done
    inputs=$( (echo "$base $version"; cd "$here" && sha256sum build.sh $files) | sha256sum | cut -c1-12)
    if [ "$(docker image inspect -f '{{index .Config.Labels "io.rolling-sandbox.inputs"}}' "$ref" 2>/dev/null)" = "$inputs" ]; then
        echo "$ref is up to date (inputs $inputs)"
        continue
    fi
    wheels="$here/build/wheels"
    mkdir -p "$wheels"
    [ -n "${fetched:-}" ] || "$py" -m pip download --quiet --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
        -d "$wheels" -r "$here/requirements.txt"
    fetched=yes
    ctx="$here/build/$version"
    rm -rf "$ctx"
    mkdir -p "$ctx/app/migrations/versions" "$ctx/wheels"
    (cd "$here" && for f in $files; do
        case "$f" in
            app/*) cp "$f" "$ctx/$f" ;;
            "$version"/*) cp "$f" "$ctx/app/${f#*/}" ;;
            *) cp "$f" "$ctx/$f" ;;
        esac
    done)
    # only the wheels requirements.txt names (build/wheels may hold older ones)
    grep -v '^#' "$here/requirements.txt" | sed -n 's/^\([A-Za-z0-9_.-]*\)==\(.*\)$/\1 \2/p' | while read -r name pin; do
        norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
        found=$(cd "$wheels" && ls | while read -r w; do
            case "$(echo "$w" | tr 'A-Z-' 'a-z_')" in "${norm}_${pin}_"*|"${norm}-${pin}-"*) echo "$w" ;; esac
        done | head -n 1)
        [ -n "$found" ] || { echo "build.sh: no wheel of $name $pin in $wheels" >&2; exit 1; }
        cp "$wheels/$found" "$ctx/wheels/"
    done
    old=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)
    docker build --quiet --build-arg "BASE=$base" \
        --label io.rolling-sandbox.managed=true --label io.rolling-sandbox.role=app-image \
        --label io.rolling-sandbox.project=example-alembic-orders --label "io.rolling-sandbox.version=$version" \
        --label "io.rolling-sandbox.inputs=$inputs" \
        -t "$ref" "$ctx" >/dev/null
    new=$(docker image inspect -f '{{.Id}}' "$ref")
    # the image these inputs replaced, unless a container still uses it
    if [ -n "$old" ] && [ "$old" != "$new" ]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
    echo "built $ref (inputs $inputs)"
done
