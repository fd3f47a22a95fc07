#!/usr/bin/env bash
# Builds {{name}}.wasm, the component huddle loads, from src/lib.rs.
#
# Needs Rust with the wasm32-wasip2 target (rustup target add wasm32-wasip2).
# CARGO_TARGET_DIR may point several plugins at one shared target directory,
# so the bindings are compiled once for all of them; the component is copied
# here either way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if command -v rustup >/dev/null &&
    ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "$0: the wasm32-wasip2 target is missing; run: rustup target add wasm32-wasip2" >&2
    exit 1
fi

cargo build --release --target wasm32-wasip2
# Wherever the target directory is (CARGO_TARGET_DIR, .cargo/config.toml).
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cp "$target_dir/wasm32-wasip2/release/{{crate_name}}.wasm" {{name}}.wasm
echo "$0: built {{name}}.wasm" >&2
