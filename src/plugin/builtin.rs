//! The default plugins, built from `plugins/` by `plugins/build.sh` and
//! committed as `.wasm`, so building huddle needs no wasm toolchain.

macro_rules! builtin {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/plugins/dist/",
                $name,
                ".wasm"
            )) as &[u8],
        )
    };
}

/// Every built-in plugin: its name in huddle.toml and its component bytes.
pub const BUILTINS: &[(&str, &[u8])] = &[
    builtin!("headings"),
    builtin!("markdown"),
    builtin!("webhook"),
    builtin!("stderr"),
];

pub fn builtin_wasm(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, wasm)| *wasm)
}
