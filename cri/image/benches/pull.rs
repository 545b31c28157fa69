//! Cold and warm pull: carrack's ImageStore against containerd 1.6 (Debian)
//! through its CRI ImageService, the same image from the same loopback
//! registry, interleaved. Not a timed test: it prints medians and ratios.
//!
//! The image: busybox plus 4 layers, each of 5.5 MB random data and 5.5 MB of
//! compressible text (≈ 23 MB gzip, 46 MB unpacked, 5 layers).
//!
//! Cold pull: carrack opens an empty store for each round (open not timed);
//! containerd pulls after CRI RemoveImage, which in 1.6 deletes the image
//! with a synchronous GC of its content and snapshots. Warm pull: the same
//! reference again while present (carrack: by tag, which asks the registry
//! for the manifest once, and by digest, which asks nothing).
//!
//! Run: `cargo bench -p carrack-image --bench pull` as root (optionally
//! `ROUNDS=9`). Needs docker-registry, skopeo, containerd, busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carrack_e2e::image_builder::{Compression, ImageSpec, Layer, OciLayout};
use carrack_e2e::registry::Registry;
use carrack_image::{ImageStore, ImageStoreConfig, RegistryConfig};
use carrack_proto::cri::image_service_client::ImageServiceClient;
use carrack_proto::cri::{ImageSpec as CriImageSpec, PullImageRequest, RemoveImageRequest};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unmount_below(dir: &Path) {
    if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
        let prefix = dir.to_string_lossy().into_owned();
        for line in m.lines().rev() {
            if let Some(mp) = line.split(' ').nth(4)
                && mp.starts_with(&prefix)
            {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn start_containerd(dir: &Path, registry: &str) -> Containerd {
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
        d = dir.display()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    Containerd {
        child,
        dir: dir.to_owned(),
    }
}

async fn connect(sock: PathBuf) -> ImageServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sock.clone();
        let ch = Endpoint::try_from("http://[::]:0")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let s = s.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(s).await?)) }
            }))
            .await;
        if let Ok(ch) = ch {
            let mut c = ImageServiceClient::new(ch);
            if c.list_images(carrack_proto::cri::ListImagesRequest::default())
                .await
                .is_ok()
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "containerd CRI did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user + system) of this process, in ms.
fn self_cpu_ms() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is valid.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system) of process `pid`, in ms.
fn pid_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the comm.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn build_image(reg: &Registry, dir: &Path) -> (String, String) {
    let mut layers = vec![Layer::busybox(Compression::Gzip).unwrap()];
    let text: Vec<u8> = (0..5_500_000u32)
        .map(|i| b"carrack image store benchmark text "[(i % 35) as usize] ^ ((i / 4096) % 7) as u8)
        .collect();
    for i in 0..4u64 {
        layers.push(
            Layer::new(Compression::Gzip)
                .random_file(&format!("data/random-{i}"), 5_500_000, i + 1)
                .file(&format!("data/text-{i}"), &text, 0o644),
        );
    }
    let mut layout = OciLayout::create(&dir.join("layout")).unwrap();
    let built = layout.add_image("v1", &ImageSpec::new(layers)).unwrap();
    let reference = format!("{}/bench/layers:v1", reg.host());
    layout.push("v1", &reference, None, false).unwrap();
    eprintln!(
        "image {reference}: 5 layers, {:.1} MB compressed",
        built.layers_size as f64 / 1e6
    );
    (reference, built.manifest_digest)
}

#[tokio::main]
async fn main() {
    use carrack_e2e::prerequisite::{is_root, require_file};
    if !is_root()
        || !require_file(carrack_e2e::registry::DOCKER_REGISTRY, "docker-registry")
        || !require_file("/usr/bin/skopeo", "skopeo")
        || !require_file("/usr/bin/containerd", "containerd")
    {
        eprintln!("skipping the pull benchmark: needs root, docker-registry, skopeo, containerd");
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let work = std::env::temp_dir().join(format!("carrack-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let reg = Registry::start().unwrap();
    let (reference, digest) = build_image(&reg, &work);
    let by_digest = format!("{}@{digest}", reference.rsplit_once(':').unwrap().0);
    let ctrd = start_containerd(&work.join("containerd"), &reg.host());
    let mut cri = connect(work.join("containerd/containerd.sock")).await;
    let pull_req = || PullImageRequest {
        image: Some(CriImageSpec {
            image: reference.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };

    let (mut c_cold, mut c_tag, mut c_digest, mut d_cold, mut d_warm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut c_cpu, mut d_cpu) = (Vec::new(), Vec::new());
    // Round 0 warms both up (page cache, registry) and is not counted.
    for round in 0..=rounds {
        // carrack
        let dir = work.join(format!("carrack-{round}"));
        let store = ImageStore::open(ImageStoreConfig {
            root: dir.clone(),
            db_path: dir.join("carrack.db"),
            registries: RegistryConfig::default(),
            max_concurrent_downloads: 4,
            overlay_method: None,
            ..Default::default()
        })
        .await
        .unwrap();
        let cpu0 = self_cpu_ms();
        let t = Instant::now();
        store.pull(&reference, None).await.unwrap();
        let cold = t.elapsed();
        let ccpu = self_cpu_ms() - cpu0;
        let t = Instant::now();
        store.pull(&reference, None).await.unwrap();
        let tag = t.elapsed();
        let t = Instant::now();
        store.pull(&by_digest, None).await.unwrap();
        let dig = t.elapsed();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();

        // containerd
        let cpu0 = pid_cpu_ms(ctrd.child.id());
        let t = Instant::now();
        cri.pull_image(pull_req()).await.unwrap();
        let dcold = t.elapsed();
        let dcpu = pid_cpu_ms(ctrd.child.id()) - cpu0;
        let t = Instant::now();
        cri.pull_image(pull_req()).await.unwrap();
        let dwarm = t.elapsed();
        cri.remove_image(RemoveImageRequest {
            image: Some(CriImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        eprintln!(
            "round {round}: carrack cold {:.1} ms (cpu {ccpu:.0} ms), by tag {:.2} ms, by digest {:.3} ms | containerd cold {:.1} ms (cpu {dcpu:.0} ms), warm {:.2} ms",
            ms(cold),
            ms(tag),
            ms(dig),
            ms(dcold),
            ms(dwarm)
        );
        if round > 0 {
            c_cold.push(ms(cold));
            c_cpu.push(ccpu);
            d_cpu.push(dcpu);
            c_tag.push(ms(tag));
            c_digest.push(ms(dig));
            d_cold.push(ms(dcold));
            d_warm.push(ms(dwarm));
        }
    }
    let (cc, ct, cd, dc, dw) = (
        median(&mut c_cold),
        median(&mut c_tag),
        median(&mut c_digest),
        median(&mut d_cold),
        median(&mut d_warm),
    );
    let (ccpu, dcpu) = (median(&mut c_cpu), median(&mut d_cpu));
    println!("medians over {rounds} rounds:");
    println!(
        "  cold pull:   carrack {cc:.1} ms, containerd {dc:.1} ms, containerd/carrack = {:.2}x",
        dc / cc
    );
    println!(
        "  cold pull CPU time: carrack {ccpu:.0} ms (in this process), containerd {dcpu:.0} ms (its process)"
    );
    println!(
        "  repeat pull: carrack by tag {ct:.2} ms, by digest {cd:.3} ms, containerd {dw:.2} ms"
    );
    drop(ctrd);
    drop(reg);
    let _ = std::fs::remove_dir_all(&work);
}
