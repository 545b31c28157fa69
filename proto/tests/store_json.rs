//! carrackd keeps CRI configs in its store as JSON (serde). Records written
//! while the CRI types came from the k8s-cri 0.11 crate must read with the
//! generated types of `cri/v1/api.proto`, and records written now must read
//! with k8s-cri's (a downgraded carrackd), fields added since left out.

use std::collections::HashMap;

use carrack_proto::cri;
use k8s_cri::v1 as old;

fn old_config() -> old::ContainerConfig {
    old::ContainerConfig {
        metadata: Some(old::ContainerMetadata {
            name: "web".into(),
            attempt: 2,
        }),
        image: Some(old::ImageSpec {
            image: "registry.local/web:1".into(),
            annotations: HashMap::from([("a".into(), "b".into())]),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into()],
        envs: vec![old::KeyValue {
            key: "GREETING".into(),
            value: "grüß dich".into(),
        }],
        mounts: vec![old::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: old::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        }],
        linux: Some(old::LinuxContainerConfig {
            resources: Some(old::LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                unified: HashMap::from([("memory.high".into(), "50M".into())]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_record_of_k8s_cri_reads() {
    let text = serde_json::to_string(&old_config()).unwrap();
    let now: cri::ContainerConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(now.metadata.as_ref().unwrap().attempt, 2);
    assert_eq!(now.envs[0].key, "GREETING");
    assert_eq!(now.envs[0].value, "grüß dich".as_bytes());
    assert_eq!(now.mounts[0].host_path, "/srv/data");
    assert_eq!(
        now.mounts[0].propagation,
        cri::MountPropagation::PropagationHostToContainer as i32
    );
    let res = now.linux.unwrap().resources.unwrap();
    assert_eq!(res.memory_limit_in_bytes, 64 << 20);
    assert_eq!(res.unified["memory.high"], "50M");
    // Fields k8s-cri 0.11 does not have take their defaults.
    assert_eq!(now.stop_signal, cri::Signal::RuntimeDefault as i32);
    assert_eq!(now.image.unwrap().image_ref, "");
    assert_eq!(now.mounts[0].image_sub_path, "");
}

#[test]
fn a_record_written_now_reads_in_k8s_cri() {
    let old_text = serde_json::to_string(&old_config()).unwrap();
    let mut now: cri::ContainerConfig = serde_json::from_str(&old_text).unwrap();
    now.stop_signal = cri::Signal::Sigquit as i32;
    let text = serde_json::to_string(&now).unwrap();
    // serde ignores the fields it does not know.
    let back: old::ContainerConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, old_config());
}
