//! Embeds the `/view` page (web/dist, built by scripts/build-web.sh) into the relay when it has
//! been built, so the binary serves it with nothing beside it. Without it the relay still
//! builds, and `/view` answers 503 naming the script (src/view.rs).

use std::path::{Path, PathBuf};

/// The files the page is made of, as scripts/build-web.sh leaves them in web/dist.
const FILES: [&str; 3] = ["view.html", "app.js", "app.css"];

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("../web");
    let dist = web.join("dist");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_assets.rs");
    let found: Vec<PathBuf> = FILES.iter().map(|f| dist.join(f)).filter(|p| p.is_file()).collect();
    // A build of the page (re)writes dist; before it exists, watch for it to appear.
    let watched = if dist.is_dir() { &dist } else { &web };
    println!("cargo:rerun-if-changed={}", watched.display());
    for path in &found {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let code = if found.len() == FILES.len() {
        let lit = |p: &Path| format!("{:?}", p.display().to_string());
        format!(
            "/// The page built from web/ (scripts/build-web.sh).\npub const BUNDLE: Option<Bundle> = Some(Bundle {{ html: include_str!({}), js: include_str!({}), css: include_str!({}) }});\n",
            lit(&found[0]),
            lit(&found[1]),
            lit(&found[2])
        )
    } else {
        "/// web/dist was not built when this relay was (scripts/build-web.sh).\npub const BUNDLE: Option<Bundle> = None;\n".to_owned()
    };
    std::fs::write(&out, code).expect("write web_assets.rs");
}
