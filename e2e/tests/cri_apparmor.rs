//! End-to-end: a container's AppArmor profile through the real carrackd,
//! shim and carrack-runtime, seen from inside (`/proc/self/attr/current`
//! and what the profile denies, in the container's process and in an
//! exec'd one).
//!
//! Where the kernel has AppArmor (the systemd VM; `CARRACK_TEST_APPARMOR`):
//! an unset or RuntimeDefault profile is carrackd's `carrack-default`,
//! which denies mounting even to a container holding CAP_SYS_ADMIN;
//! Unconfined (here through the deprecated string field) is unconfined
//! and may mount; a Localhost profile loaded by the test confines as it
//! says, and one not loaded is refused naming the field, before anything
//! is made. On a host without AppArmor containers run without a profile
//! (they may mount) and any Localhost profile is refused naming the field.

use carrack_e2e::apparmor::{self, TestProfile};
use carrack_e2e::carrackd::{Carrackd, require_carrackd_stack};
use carrack_e2e::cri_client::{Rt, container_config, exec, pod_config, run_container};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 240;

/// Prints the label, tries a mount and two writes; each says how it went.
const PROBE: &str = "echo label=$(cat /proc/self/attr/current 2>/dev/null); \
    mkdir -p /mnt/aa && mount -t tmpfs tmpfs /mnt/aa 2>/dev/null && echo mounted && umount /mnt/aa; \
    echo x >/aa-denied 2>/dev/null && echo denied-file-written; \
    echo x >/aa-allowed && echo allowed-file-written";

/// A `sleep` container holding CAP_SYS_ADMIN (so that only AppArmor can
/// refuse its mounts), its security context edited by `edit`.
fn container(
    image: &str,
    name: &str,
    edit: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> cri::ContainerConfig {
    let mut c = container_config(name, image, &["sleep", "3600"]);
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    edit(sc);
    c
}

fn structured(
    profile_type: cri::security_profile::ProfileType,
    localhost_ref: &str,
) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// The probe's output from an exec'd process.
async fn probe(rt: &mut Rt, id: &str) -> String {
    let (_, out, err) = exec(rt, id, &["sh", "-c", PROBE]).await;
    format!("{out}{err}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apparmor_profiles_default_unconfined_and_localhost() {
    if !require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"]) {
        return;
    }
    let enforced = apparmor::usable();
    if apparmor::kernel_has_apparmor() && !enforced {
        return; // usable() said what is missing
    }
    let deny_name = format!("carrack-e2e-deny-file-{}", std::process::id());
    let localhost = enforced.then(|| {
        TestProfile::load(
            &deny_name,
            "  file,\n  signal,\n  capability,\n  deny /aa-denied w,",
        )
    });
    let CriStack {
        image,
        daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(Carrackd::options().test_network(NETWORK_BASE), |logs| {
        pod_config("aa", logs)
    })
    .await;
    let runtime_default = |sc: &mut cri::LinuxContainerSecurityContext| {
        sc.apparmor = structured(cri::security_profile::ProfileType::RuntimeDefault, "");
    };
    let default = run_container(
        &mut rt,
        &pod,
        container(&image.name, "default", runtime_default),
        None,
    )
    .await;
    let unset = run_container(&mut rt, &pod, container(&image.name, "unset", |_| {}), None).await;
    #[allow(deprecated)] // kubelet still sends the string field
    let unconfined = run_container(
        &mut rt,
        &pod,
        container(&image.name, "unconfined", |sc| {
            sc.apparmor_profile = "unconfined".into()
        }),
        None,
    )
    .await;
    let out = probe(&mut rt, &default).await;
    if enforced {
        assert!(out.contains("label=carrack-default (enforce)"), "{out}");
        assert!(
            !out.contains("mounted"),
            "carrack-default denies mount: {out}"
        );
        let out = probe(&mut rt, &unset).await;
        assert!(out.contains("label=carrack-default (enforce)"), "{out}");
        let out = probe(&mut rt, &unconfined).await;
        assert!(
            out.contains("label=unconfined") && out.contains("mounted"),
            "{out}"
        );
    } else {
        for id in [&default, &unset, &unconfined] {
            let out = probe(&mut rt, id).await;
            assert!(
                out.contains("mounted"),
                "no AppArmor here, no profile: {out}\n{}",
                daemon.log()
            );
        }
    }

    // Localhost: the loaded test profile (or, without AppArmor, any name is
    // refused); a profile not loaded is refused naming the field.
    let missing = "carrack-e2e-never-loaded";
    for (name, loaded) in [(deny_name.as_str(), enforced), (missing, false)] {
        let config = container(&image.name, &format!("local-{loaded}"), |sc| {
            sc.apparmor = structured(
                cri::security_profile::ProfileType::Localhost,
                &format!("localhost/{name}"),
            );
        });
        let created = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await;
        if !loaded {
            let e = created.expect_err(name);
            assert!(
                e.message()
                    .contains("config.linux.security_context.apparmor")
                    && e.message().contains(name),
                "{e}"
            );
            let code = if enforced {
                tonic::Code::FailedPrecondition
            } else {
                tonic::Code::InvalidArgument
            };
            assert_eq!(e.code(), code, "{e}");
            continue;
        }
        let id = created.unwrap().into_inner().container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", daemon.log()));
        let out = probe(&mut rt, &id).await;
        assert!(out.contains(&format!("label={name} (enforce)")), "{out}");
        assert!(
            !out.contains("denied-file-written") && out.contains("allowed-file-written"),
            "{out}"
        );
    }
    let listed = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        listed
            .iter()
            .all(|c| !c.metadata.as_ref().unwrap().name.starts_with("local-false")),
        "a refused container is not listed"
    );
    drop((rt, daemon, image, localhost));
}
