//! Embeds the consumer portal (`portal/`) into the plugin: each asset raw and gzipped (at
//! compile time, so the plugin never compresses), all of them under one directory named by the
//! hash of their contents, so that they can be cached for a year and a new build is never
//! served stale. Pure Rust (flate2 on miniz_oxide, sha2): no npm, no bundler.

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=portal");
    let source = Path::new("portal");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("portal");
    fs::create_dir_all(&out)?;
    let mut names: Vec<String> = fs::read_dir(source)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name != "index.html" && content_type(name).is_some())
        .collect();
    names.sort();
    let mut hash = Sha256::new();
    let mut table = String::new();
    for name in &names {
        let raw = fs::read(source.join(name))?;
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(&raw);
        // mtime 0 and no file name in the header: the same sources give the same bytes.
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&raw)?;
        let gz_path = out.join(format!("{name}.gz"));
        fs::write(&gz_path, gz.finish()?)?;
        let raw_path = out.join(name);
        fs::write(&raw_path, &raw)?;
        table.push_str(&format!(
            "    Asset {{ name: {name:?}, content_type: {:?}, raw: include_bytes!({:?}), gzip: include_bytes!({:?}) }},\n",
            content_type(name).unwrap_or("application/octet-stream"),
            raw_path.display().to_string(),
            gz_path.display().to_string(),
        ));
    }
    let digest = hash.finalize();
    let dir: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let shell = source.join("index.html").canonicalize()?;
    let code = format!(
        "/// The directory the assets are served under: the hash of their names and contents.\n\
         pub const ASSET_DIR: &str = {dir:?};\n\
         /// The page's HTML, with `{{{{title}}}}`, `{{{{prefix}}}}` and `{{{{assets}}}}` to fill.\n\
         pub const SHELL: &str = include_str!({:?});\n\
         pub const ASSETS: &[Asset] = &[\n{table}];\n",
        shell.display().to_string()
    );
    fs::write(out.join("assets.rs"), code)?;
    Ok(())
}

fn content_type(name: &str) -> Option<&'static str> {
    match name.rsplit_once('.')?.1 {
        "js" => Some("text/javascript; charset=utf-8"),
        "css" => Some("text/css; charset=utf-8"),
        "svg" => Some("image/svg+xml"),
        _ => None,
    }
}
