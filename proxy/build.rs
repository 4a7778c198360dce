//! Link flags of the `outrider-proxy` binary that belong to the repository rather than to
//! whoever builds it (`RUSTFLAGS`, which the Docker build sets, would replace the `rustflags` of
//! a `.cargo/config.toml`).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    // Relative relocations packed (`DT_RELR`): the table the loader applies at start-up to a
    // position-independent binary shrinks from about 420 KB (24 bytes per relocation) to 10 KB,
    // pages of the file a running proxy would otherwise keep resident (docs/benchmarks.md,
    // "### Memory"). A dynamically linked binary then needs glibc >= 2.36 to start, so the flag
    // is used for a static one (the images: glibc's own start-up code applies the relocations)
    // and for a dynamic one built on a glibc that new (it runs where it was built).
    let crt_static = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    if crt_static || (var("HOST") == var("TARGET") && host_glibc_at_least(2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the build machine's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least
/// `major.minor`; false when it cannot tell.
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else { return false };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
