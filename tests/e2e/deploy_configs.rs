//! Every example config under `deploy/` parses and validates.

use std::path::Path;

#[test]
fn example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue; // deploy/local holds the demo's topology, checked by the demo's unit tests
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let result = match name {
            n if n.starts_with("coordinator") && n.ends_with(".toml") => {
                meridian_coordinator::config::Args::from_toml(&text)
                    .and_then(|a| a.resolve())
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            n if n.starts_with("proxy") && n.ends_with(".toml") => meridian_proxy::config::Args::from_toml(&text)
                .and_then(|a| a.resolve())
                .map(drop)
                .map_err(|e| e.to_string()),
            _ => continue,
        };
        assert!(result.is_ok(), "{}: {}", path.display(), result.unwrap_err());
        seen += 1;
    }
    assert!(seen >= 2, "an example config per role, found {seen}");
}
