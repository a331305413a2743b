//! The file watcher: changes are applied within one second, a broken file keeps the last good snapshot.
use gateway_userspace::provider::file;
use std::path::PathBuf;
use std::time::Duration;

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("gw-watch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn names(snapshot: &gateway_userspace::snapshot::Snapshot) -> Vec<String> {
    snapshot
        .namespaces
        .iter()
        .map(|n| n.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn watcher_applies_changes_and_keeps_last_good_snapshot() {
    let dir = temp_dir();
    let config = dir.join("config.yaml");
    std::fs::write(&config, namespace("first")).unwrap();

    let (mut rx, task) = file::watch(vec![dir.clone()]);
    assert_eq!(names(&rx.borrow_and_update()), ["first"]);

    // A change is applied within one second.
    std::fs::write(&config, namespace("second")).unwrap();
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("change seen within 1 s")
        .unwrap();
    assert_eq!(names(&rx.borrow_and_update()), ["second"]);

    // Garbage: logged, and the last good snapshot stays.
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Namespace\nmetadata: [oops\n",
    )
    .unwrap();
    let changed = tokio::time::timeout(Duration::from_millis(1000), rx.changed()).await;
    assert!(
        changed.is_err(),
        "a broken file must not replace the snapshot"
    );
    assert_eq!(names(&rx.borrow()), ["second"]);

    // Fixed again, plus a new file in a subdirectory (directories are walked recursively, in path order).
    std::fs::create_dir_all(dir.join("more")).unwrap();
    std::fs::write(dir.join("more/extra.yml"), namespace("extra")).unwrap();
    std::fs::write(&config, namespace("third")).unwrap();
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("change seen within 1 s")
        .unwrap();
    let mut seen = names(&rx.borrow_and_update());
    if seen.len() < 2 {
        // The two writes may straddle a poll; the second one lands on the next.
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("second change")
            .unwrap();
        seen = names(&rx.borrow_and_update());
    }
    assert_eq!(seen, ["third", "extra"]);

    // Dropping the receiver ends the task.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("watcher stops")
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn watcher_starts_empty_when_the_first_load_fails() {
    let dir = temp_dir();
    std::fs::write(dir.join("bad.yaml"), "kind: [").unwrap();
    let (mut rx, _task) = file::watch(vec![dir.clone()]);
    assert!(rx.borrow_and_update().is_empty());
    std::fs::write(dir.join("bad.yaml"), namespace("ok")).unwrap();
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("recovers within 1 s")
        .unwrap();
    assert_eq!(names(&rx.borrow()), ["ok"]);
    std::fs::remove_dir_all(&dir).ok();
}
