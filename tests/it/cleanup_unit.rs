//! The packaged cleanup service (packaging/systemd) lets `cleanup` write
//! exactly where the code writes: its sandbox is read-only elsewhere, so a
//! path renamed in the code and not in the unit would make every timer run
//! fail (or be skipped for ever, for a condition).

use std::path::Path;

use xen_block_hotplug::{lock, logging, loopdev};

const UNIT: &str = include_str!("../../packaging/systemd/xen-block-hotplug-cleanup.service");

fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(str::split_whitespace)
        .collect()
}

#[test]
fn the_cleanup_service_may_write_where_cleanup_writes() {
    let lock_dir = Path::new(lock::DEFAULT_PATH)
        .parent()
        .and_then(Path::to_str)
        .expect("the lock path has a directory");
    let writable = values("ReadWritePaths");
    for dir in [loopdev::RECORD_DIR, lock_dir, logging::LOG_DIR] {
        assert!(
            writable.contains(&format!("-{dir}").as_str()),
            "{dir} is not in ReadWritePaths {writable:?}"
        );
    }
}

#[test]
fn the_cleanup_service_runs_once_an_add_has_made_its_directories() {
    let lock_dir = Path::new(lock::DEFAULT_PATH)
        .parent()
        .and_then(Path::to_str)
        .expect("the lock path has a directory");
    let conditions = values("ConditionPathIsDirectory");
    assert_eq!(conditions, vec![loopdev::RECORD_DIR, lock_dir]);
    assert_eq!(
        values("ExecStart"),
        vec!["/usr/sbin/xen-block-hotplug", "cleanup"]
    );
}
