#!/usr/bin/env bash
# Builds the example plugins written in Python and JavaScript, each into the
# .wasm committed beside its sources:
#
#   examples/python-renderer/python-renderer.wasm  componentize-py (PyPI)
#   examples/js-sink/js-sink.wasm                  componentize-js (npm)
#   examples/js-renderer/js-renderer.wasm          componentize-js (npm; the
#                                                  project `huddle plugins new
#                                                  js-renderer --world renderer
#                                                  --lang js` writes)
#
# Usage:
#   examples/build-polyglot.sh           install the tools if missing, build
#   examples/build-polyglot.sh --check   build into a temporary folder and run
#                                        `huddle plugins check` on the fresh
#                                        components
#   examples/build-polyglot.sh --tools   only install the tools
#
# The tools come from the registries at pinned versions: componentize-py into
# the virtualenv target/mcp-venv (the one scripts/test makes), componentize-js
# from examples/js-sink/package-lock.json into target/polyglot-npm.
#
# Unlike plugins/build.sh, --check cannot compare bytes: both tools snapshot
# an initialised interpreter (Python's, SpiderMonkey's) whose heap differs
# from one build to the next (hash seeds, addresses), so two builds of the
# same sources differ in most of their bytes. The committed components are
# checked by the tests (tests/it/plugin_polyglot.rs); --check proves that
# the sources still build into components huddle accepts, for the same world.
set -euo pipefail

usage() {
    echo "usage: $0 [--check | --tools]" >&2
    exit 2
}

mode=build
case $# in
    0) ;;
    1)
        case $1 in
            --check) mode=check ;;
            --tools) mode=tools ;;
            *) usage ;;
        esac
        ;;
    *) usage ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
componentize_py_version=0.25.1
venv=$root/target/mcp-venv
npm_dir=$root/target/polyglot-npm

install_tools() {
    if [[ ! -x $venv/bin/python ]]; then
        echo "$0: creating $venv" >&2
        python3 -m venv "$venv"
    fi
    # `python -m pip`, not bin/pip: a virtualenv copied from elsewhere keeps
    # the old path in bin/pip's first line.
    if [[ $("$venv/bin/python" -m pip show componentize-py 2>/dev/null | sed -n 's/^Version: //p') != "$componentize_py_version" ]]; then
        echo "$0: installing componentize-py $componentize_py_version into $venv" >&2
        "$venv/bin/python" -m pip install -q "componentize-py==$componentize_py_version"
    fi
    mkdir -p "$npm_dir"
    if ! cmp -s "$root/examples/js-sink/package-lock.json" "$npm_dir/package-lock.json" ||
        [[ ! -x $npm_dir/node_modules/.bin/componentize-js ]]; then
        if ! command -v npm >/dev/null; then
            echo "$0: installing Debian's npm" >&2
            local sudo=()
            [[ $(id -u) == 0 ]] || sudo=(sudo)
            "${sudo[@]}" apt-get update -qq
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
        fi
        echo "$0: installing componentize-js into $npm_dir (npm ci)" >&2
        cp "$root/examples/js-sink/package.json" "$root/examples/js-sink/package-lock.json" "$npm_dir/"
        (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

install_tools
[[ $mode == tools ]] && exit 0

if [[ $mode == build ]]; then
    python_out=$root/examples/python-renderer/python-renderer.wasm
    js_out=$root/examples/js-sink/js-sink.wasm
    js_renderer_out=$root/examples/js-renderer/js-renderer.wasm
else
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    python_out=$scratch/python-renderer.wasm
    js_out=$scratch/js-sink.wasm
    js_renderer_out=$scratch/js-renderer.wasm
fi

echo "building examples/python-renderer/" >&2
# Bytecode caches would land in the source folder (componentize-py still
# writes one with its own Python: .gitignore keeps it out).
(cd "$root/examples/python-renderer" &&
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" \
        --wit-path "$root/wit/since_v0.2.0" --world renderer \
        componentize app -o "$python_out" >/dev/null)

echo "building examples/js-sink/" >&2
(cd "$root" && "$npm_dir/node_modules/.bin/componentize-js" examples/js-sink/sink.js \
    --wit wit/since_v0.2.0 --world-name alert-sink \
    --disable http fetch-event -o "$js_out" >/dev/null)

echo "building examples/js-renderer/" >&2
(cd "$root/examples/js-renderer" && "$npm_dir/node_modules/.bin/componentize-js" plugin.js \
    --wit wit --world-name renderer \
    --disable http fetch-event -o "$js_renderer_out" >/dev/null)

chmod 0644 "$python_out" "$js_out" "$js_renderer_out"

if [[ $mode == build ]]; then
    for file in "$python_out" "$js_out" "$js_renderer_out"; do
        printf '%s  %8d  %s\n' "$(sha256sum "$file" | cut -d' ' -f1)" \
            "$(stat -c %s "$file")" "${file#"$root"/}"
    done
    exit 0
fi

# --check: the fresh components must be accepted for their world.
cargo build --locked --quiet --manifest-path "$root/Cargo.toml" --bin huddle
huddle=$root/target/debug/huddle
export HUDDLE_CACHE_DIR=$scratch/cache
failed=0
for pair in "$python_out huddle:plugin/renderer@0.2.0" "$js_out huddle:plugin/alert-sink@0.2.0" \
    "$js_renderer_out huddle:plugin/renderer@0.2.0"; do
    read -r file world <<<"$pair"
    if ! verdict=$("$huddle" plugins check "$file" 2>&1) || [[ $verdict != *"implements $world"* ]]; then
        echo "$0 --check: a fresh build of $(basename "$file") is not accepted as $world:" >&2
        echo "$verdict" >&2
        failed=1
    fi
done
((failed == 0)) || exit 1
echo "$0 --check: the fresh components are accepted by huddle plugins check." >&2
