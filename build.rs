//! Links the `huddle` executable as non-PIE. Every `huddle log` is a new
//! process, and a position-independent executable of this size (wasmtime is
//! inside) spends about half a millisecond applying ~38,000 relocations at
//! start-up; linked at a fixed address it applies under 200. The cost is
//! ASLR for the executable's own code (libraries are still randomised).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
