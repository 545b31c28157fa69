//! carrackd's SQLite store through its public API: container records keep
//! every field across a reopen (what restart recovery reads), names stay
//! reserved until the row goes, and the database file is shared with
//! another connection (the image store's) while both write.

use std::collections::HashMap;
use std::path::PathBuf;

use carrack_proto::cri;
use carrackd::store::{
    ContainerRecord, ContainerState, SandboxRecord, SandboxState, Store, StoreError,
};

fn sandbox(id: &str, name: &str) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        name: name.into(),
        config: cri::PodSandboxConfig {
            hostname: "carrack-test-store".into(),
            labels: HashMap::from([("app".into(), "web".into())]),
            ..Default::default()
        },
        runtime_handler: "runc".into(),
        state: SandboxState::Creating,
        created_at: 10,
        cgroup_path: "/carrack-test-store/pod".into(),
        netns: "/run/carrack-test-store/net".into(),
        ipcns: String::new(),
        utsns: String::new(),
        ip: String::new(),
        additional_ips: Vec::new(),
        infra: None,
        userns: String::new(),
    }
}

fn container(id: &str, name: &str, sandbox_id: &str) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        name: name.into(),
        sandbox_id: sandbox_id.into(),
        config: cri::ContainerConfig {
            command: vec!["sh".into(), "-c".into(), "sleep 1".into()],
            envs: vec![cri::KeyValue {
                key: "K".into(),
                value: "v".into(),
            }],
            annotations: HashMap::from([("a".into(), "b".into())]),
            ..Default::default()
        },
        image_id: "sha256:abc".into(),
        image_ref: "reg/x@sha256:def".into(),
        state: ContainerState::Creating,
        created_at: 100,
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        log_path: "/var/log/pods/x/c/0.log".into(),
        bundle: PathBuf::from("/run/carrack-test-store/c"),
        runtime_handler: "runc".into(),
        stop_signal: 3,
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        }),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: 1000,
                gid: 1000,
                supplemental_groups: vec![1000, 5],
            }),
        }),
    }
}

#[test]
fn container_records_survive_reopen_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carrack.db");
    let s = Store::open(&db).unwrap();
    s.insert_sandbox(&sandbox("s1", "pod_ns_uid_0")).unwrap();
    s.insert_container(&container("c1", "c_pod_ns_uid_0", "s1"))
        .unwrap();
    let mut c = container("c1", "c_pod_ns_uid_0", "s1");
    c.state = ContainerState::Exited;
    c.started_at = 200;
    c.finished_at = 300;
    c.exit_code = 137;
    c.reason = "OOMKilled".into();
    c.message = "memory limit".into();
    s.update_container(&c).unwrap();
    drop(s);

    let s = Store::open(&db).unwrap();
    let all = s.containers().unwrap();
    assert_eq!(all.len(), 1);
    let got = &all[0];
    assert_eq!(got.state, ContainerState::Exited);
    assert_eq!(
        (got.started_at, got.finished_at, got.exit_code),
        (200, 300, 137)
    );
    assert_eq!(got.reason, "OOMKilled");
    assert_eq!(got.message, "memory limit");
    assert_eq!(got.config, c.config);
    assert_eq!(got.resources, c.resources);
    assert_eq!(got.user, c.user);
    assert_eq!(got.stop_signal, 3);
    assert_eq!(got.bundle, c.bundle);
    assert_eq!(got.image_ref, "reg/x@sha256:def");
    let sb = s.sandboxes().unwrap();
    assert_eq!(sb[0].config.labels["app"], "web");
    assert_eq!(sb[0].netns, "/run/carrack-test-store/net");
}

#[test]
fn container_names_are_reserved_until_the_row_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("carrack.db")).unwrap();
    s.insert_container(&container("c1", "name", "s1")).unwrap();
    match s.insert_container(&container("c2", "name", "s1")) {
        Err(StoreError::NameTaken { name, holder }) => {
            assert_eq!((name.as_str(), holder.as_str()), ("name", "c1"));
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }
    // The message names the holder, as AlreadyExists must.
    let e = s
        .insert_container(&container("c3", "name", "s1"))
        .unwrap_err();
    assert!(e.to_string().contains("c1"), "{e}");
    // A sandbox may use the same string: the namespaces are separate.
    s.insert_sandbox(&sandbox("s1", "name")).unwrap();
    s.delete_container("c1").unwrap();
    s.insert_container(&container("c2", "name", "s1")).unwrap();
    let ids: Vec<String> = s.containers().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["c2"]);
    // Deleting what is not there is not an error (idempotent removes).
    s.delete_container("nope").unwrap();
    s.delete_sandbox("nope").unwrap();
}

#[test]
fn records_keep_insertion_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("carrack.db")).unwrap();
    for i in 0..20 {
        s.insert_sandbox(&sandbox(&format!("s{i:02}"), &format!("n{i}")))
            .unwrap();
    }
    let ids: Vec<String> = s.sandboxes().unwrap().into_iter().map(|r| r.id).collect();
    let want: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
    assert_eq!(ids, want);
}

#[test]
fn the_database_is_shared_with_another_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carrack.db");
    let s = Store::open(&db).unwrap();
    // Another connection (as the image store has) writes its own table
    // while carrackd writes its rows from another thread.
    let other = rusqlite::Connection::open(&db).unwrap();
    other
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    other
        .execute_batch("CREATE TABLE IF NOT EXISTS image_test (k INTEGER PRIMARY KEY)")
        .unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let writer = std::thread::spawn(move || {
        for i in 0..50 {
            other
                .execute("INSERT INTO image_test (k) VALUES (?1)", [i])
                .unwrap();
        }
        other
    });
    for i in 0..50 {
        s.insert_container(&container(&format!("c{i}"), &format!("n{i}"), "s"))
            .unwrap();
    }
    let other = writer.join().unwrap();
    assert_eq!(s.containers().unwrap().len(), 50);
    let n: i64 = other
        .query_row("SELECT COUNT(*) FROM image_test", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);
}
