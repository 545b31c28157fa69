//! `carrackd image import`: an OCI archive loaded into the store under the
//! configured root, where carrackd (and its image store) finds it by name;
//! a file that is no archive fails, naming the file, and imports nothing.

use std::process::Command;

use carrack_e2e::image_builder::{Compression, ImageSpec, Layer, OciLayout};

const CARRACKD: &str = env!("CARGO_BIN_EXE_carrackd");

#[tokio::test]
async fn import_an_oci_archive_then_resolve_it_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&dir.path().join("layout")).unwrap();
    let spec = ImageSpec::new(vec![Layer::new(Compression::Gzip).file(
        "etc/motd",
        b"offline\n",
        0o644,
    )]);
    let built = layout
        .add_image("docker.io/library/offline:v1", &spec)
        .unwrap();
    let archive = dir.path().join("offline.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        b.append_dir_all(".", layout.dir()).unwrap();
        b.finish().unwrap();
    }
    let root = dir.path().join("root");
    let out = Command::new(CARRACKD)
        .arg("--root")
        .arg(&root)
        .args(["image", "import"])
        .arg(&archive)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("{} docker.io/library/offline:v1", built.config_digest)
    );

    let cfg = carrackd::config::Config {
        root: root.clone(),
        ..Default::default()
    };
    let store = carrack_image::ImageStore::open(cfg.image_store_config())
        .await
        .unwrap();
    let image = store.resolve("offline:v1").unwrap().expect("imported");
    assert_eq!(image.id, built.config_digest);

    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not an archive").unwrap();
    let out = Command::new(CARRACKD)
        .arg("--root")
        .arg(&root)
        .args(["image", "import"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.tar"), "{err}");
    assert_eq!(store.list(None).unwrap().len(), 1, "nothing else imported");
}
