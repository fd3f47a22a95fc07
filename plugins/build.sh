#!/usr/bin/env bash
# Builds every WebAssembly component in the tree, reproducibly, into the
# committed dist/ folders:
#
#   plugins/dist/        default plugins, embedded in the huddle binary
#   tests/plugins/dist/  hostile plugins for the containment tests
#   examples/dist/       example plugins for plugin authors
#
# Usage:
#   plugins/build.sh           build and update the dist/ folders
#   plugins/build.sh --check   build into a temporary folder and fail, naming
#                              the files, if a committed component differs
#
# The same sources, Cargo.lock and toolchain give the same bytes wherever the
# tree lives: absolute paths are remapped, debug info is off, dependencies are
# locked, and dist/toolchain.txt records the rustc that built the components.
# CARGO_BUILD_JOBS limits parallelism as usual.
set -euo pipefail

usage() {
    echo "usage: $0 [--check]" >&2
    exit 2
}

mode=build
case $# in
    0) ;;
    1) [[ $1 == --check ]] || usage; mode=check ;;
    *) usage ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
target=wasm32-wasip2
toolchain_file=plugins/dist/toolchain.txt

# One line per component: cargo workspace, artifact name, name in dist/.
components=(
    "plugins headings headings"
    "plugins markdown markdown"
    "plugins webhook webhook"
    "plugins stderr stderr"
    "tests/plugins hostile_loop loop"
    "tests/plugins hostile_oom oom"
    "tests/plugins hostile_panic panic"
    "tests/plugins hostile_bigoutput bigoutput"
    "tests/plugins hostile_offallowlist offallowlist"
    "tests/plugins hostile_readfile readfile"
    "tests/plugins hostile_badoutput badoutput"
    "tests/plugins hostile_mapper_loop mapper-loop"
    "tests/plugins hostile_picky picky"
    "tests/plugins hostile_markerline markerline"
    "tests/plugins hostile_mapper_picky mapper-picky"
    "tests/plugins hostile_peek peek"
    "tests/plugins hostile_sink_trap sink-trap"
    "tests/plugins hostile_sink_loop sink-loop"
    "tests/plugins hostile_sink_hang_configure sink-hang-configure"
    "tests/plugins test_context context"
    "examples json_renderer json-renderer"
    "examples ntfy_sink ntfy-sink"
)
workspaces=(plugins tests/plugins examples)

if [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$target" ]]; then
    echo "$0: the $target target is not installed; run: rustup target add $target" >&2
    exit 1
fi
rustc_version=$(rustc -V)

# Remap every absolute path that could reach a binary (panic locations name
# source files): the tree, the registry sources, the toolchain. When several
# prefixes match, rustc applies the last, so the broadest comes first.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
export RUSTFLAGS="--remap-path-prefix=$root=/huddle --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$rustup_home=/rustup -C debuginfo=0"
# Settings from the caller's environment would change the bytes.
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR \
    CARGO_PROFILE_RELEASE_OPT_LEVEL CARGO_PROFILE_RELEASE_LTO CARGO_PROFILE_RELEASE_DEBUG

for workspace in "${workspaces[@]}"; do
    echo "building $workspace/" >&2
    cargo build --release --locked --target "$target" \
        --manifest-path "$root/$workspace/Cargo.toml" \
        --target-dir "$root/$workspace/target"
done

# Where the fresh components go: the committed tree, or a scratch copy of it.
if [[ $mode == build ]]; then
    out=$root
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

for workspace in "${workspaces[@]}"; do
    mkdir -p "$out/$workspace/dist"
done
for component in "${components[@]}"; do
    read -r workspace artifact name <<<"$component"
    cp "$root/$workspace/target/$target/release/$artifact.wasm" "$out/$workspace/dist/$name.wasm"
    chmod 0644 "$out/$workspace/dist/$name.wasm"
done
echo "$rustc_version" >"$out/$toolchain_file"

if [[ $mode == build ]]; then
    for component in "${components[@]}"; do
        read -r workspace _ name <<<"$component"
        file=$workspace/dist/$name.wasm
        printf '%s  %8d  %s\n' "$(sha256sum "$root/$file" | cut -d' ' -f1)" \
            "$(stat -c %s "$root/$file")" "$file"
    done
    exit 0
fi

# --check: compare the fresh build with what is committed.
if ! cmp -s "$root/$toolchain_file" "$out/$toolchain_file"; then
    echo "$0 --check: the committed components were built with" \
        "'$(cat "$root/$toolchain_file" 2>/dev/null || echo "an unknown rustc")'" \
        "but this machine has '$rustc_version'; bytes cannot match." >&2
    echo "Build with that toolchain, or run plugins/build.sh and commit the result." >&2
    exit 1
fi
differ=()
for component in "${components[@]}"; do
    read -r workspace _ name <<<"$component"
    file=$workspace/dist/$name.wasm
    if [[ ! -f "$root/$file" ]]; then
        differ+=("$file (missing from the committed tree)")
    elif ! cmp -s "$root/$file" "$out/$file"; then
        committed_sha=$(sha256sum <"$root/$file" | cut -c1-12)
        fresh_sha=$(sha256sum <"$out/$file" | cut -c1-12)
        differ+=("$file (committed sha256 $committed_sha..., fresh build $fresh_sha...)")
    fi
done
# A component nobody builds any more would ship stale code.
for workspace in "${workspaces[@]}"; do
    for file in "$root/$workspace"/dist/*.wasm; do
        [[ -e $file ]] || continue
        relative=${file#"$root"/}
        [[ -f "$out/$relative" ]] || differ+=("$relative (committed but not built by this script)")
    done
done
if ((${#differ[@]} > 0)); then
    echo "$0 --check: these committed components differ from a fresh build:" >&2
    printf '  %s\n' "${differ[@]}" >&2
    echo "Run plugins/build.sh and commit the dist/ folders." >&2
    exit 1
fi
echo "$0 --check: all ${#components[@]} committed components match a fresh build." >&2
