#!/usr/bin/env bash
# Builds js-renderer.wasm, the component huddle loads, from plugin.js.
#
# Needs Node.js 18+ and componentize-js, pinned by package-lock.json:
# run `npm ci` here once (node_modules/ may also be a symlink to a shared
# install of the same packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ ! -x node_modules/.bin/componentize-js ]]; then
    echo "$0: componentize-js is not installed here; run: npm ci" >&2
    exit 1
fi
# --disable http fetch-event leaves out the WASI HTTP imports huddle does not
# offer: a sink reaches the network only through huddle's http.post.
npx --no-install componentize-js plugin.js --wit wit --world-name renderer \
    --disable http fetch-event -o js-renderer.wasm
echo "$0: built js-renderer.wasm" >&2
