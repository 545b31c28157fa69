//! `deploy/config.toml`, the config the installer puts on a node, is
//! exactly `carrackd config default` for the install paths
//! (/usr/local/bin): every key, each with its comment. Regenerate it with
//! `CARRACK_WRITE_DEPLOY_CONFIG=1 cargo test -p carrackd --test deploy_config`.

use std::path::{Path, PathBuf};

use carrackd::config::Config;

fn installed_defaults() -> Config {
    let mut c = Config::default();
    let bin = Path::new("/usr/local/bin");
    c.shim_binary = bin.join("carrack-shim");
    c.runtimes.get_mut("carrack").unwrap().binary = bin.join("carrack-runtime");
    c
}

#[test]
fn deploy_config_is_the_documented_default_for_the_install_paths() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml");
    let want = installed_defaults().to_documented_toml();
    if std::env::var_os("CARRACK_WRITE_DEPLOY_CONFIG").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have, want,
        "deploy/config.toml is stale: see this test's doc to regenerate it"
    );
    assert_eq!(Config::parse(&have, &path).unwrap(), installed_defaults());
}
