//! The CRI socket: parent directories made, a stale socket replaced, mode
//! 0660, and a client can connect.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

#[tokio::test]
async fn bind_makes_parent_replaces_stale_socket_and_is_0660() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/carrack-test-cri/carrack.sock");

    // A stale socket from a previous run (its listener gone).
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "the stale socket must refuse connections"
    );

    let listener = carrackd::bind(&socket).unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    tokio::net::UnixStream::connect(&socket).await.unwrap();
    accept.await.unwrap().unwrap();
}

#[tokio::test]
async fn bind_creates_missing_parents() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a/b/c/carrack.sock");
    let _l = carrackd::bind(&socket).unwrap();
    assert!(socket.exists());
}

#[test]
fn bind_refuses_a_directory_in_the_way_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("carrack.sock");
    std::fs::create_dir(&socket).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(async { carrackd::bind(&socket).map(|_| ()) })
        .unwrap_err();
    assert!(e.to_string().contains("carrack.sock"), "{e}");
    // The directory is left alone.
    assert!(socket.is_dir());
}
