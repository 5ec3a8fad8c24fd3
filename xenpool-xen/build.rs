//! With the `xen` feature, generates `$OUT_DIR/xenctrl.rs` from `wrapper.h` with bindgen
//! and links libxenctrl. Without it, does nothing: the default build needs neither bindgen,
//! libclang nor the Xen headers.
//!
//! Needs (Debian 12): `apt-get install libxen-dev libclang-dev`. Only the calls the backend
//! uses are allowlisted, so the output stays small and reviewable.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "xen")]
    xen::generate();
}

#[cfg(feature = "xen")]
mod xen {
    use std::path::PathBuf;

    const FUNCTIONS: &[&str] = &[
        "xc_interface_open",
        "xc_interface_close",
        "xc_physinfo",
        "xc_version",
        "xc_domain_getinfolist",
        "xc_domain_pause",
        "xc_domain_unpause",
        "xc_domain_destroy",
        "xc_domain_shutdown",
    ];

    pub fn generate() {
        println!("cargo:rerun-if-changed=wrapper.h");
        println!("cargo:rustc-link-lib=xenctrl");
        let mut builder = bindgen::Builder::default()
            .header("wrapper.h")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .allowlist_type("xc_physinfo_t")
            .allowlist_type("xc_domaininfo_t")
            .allowlist_var("XENVER_version")
            .allowlist_var("XEN_DOMINF_.*")
            .allowlist_var("SHUTDOWN_.*")
            .derive_default(true)
            // Layout tests stay: they catch a header that no longer matches this target.
            .layout_tests(true);
        for f in FUNCTIONS {
            builder = builder.allowlist_function(f);
        }
        let bindings = match builder.generate() {
            Ok(b) => b,
            Err(e) => panic!(
                "bindgen over xenctrl.h failed ({e}); the `xen` feature needs libxen-dev and libclang"
            ),
        };
        let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("xenctrl.rs");
        if let Err(e) = bindings.write_to_file(&out) {
            panic!("writing {}: {e}", out.display());
        }
    }
}
