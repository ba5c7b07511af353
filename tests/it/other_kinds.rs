//! Empty drives and `block-TYPE` helper scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{assert_refused, bed_loops};
use crate::common::{can_loop, Bed};

#[test]
fn empty_params_is_a_connected_empty_drive() {
    if !can_loop("empty_params_is_a_connected_empty_drive") {
        return;
    }
    let bed = Bed::new("empty");
    for (devid, ty) in [(5632, "phy"), (5633, "file"), (5634, "")] {
        let b = bed.backend(7, devid, ty, "", "r");
        let r = bed.run("add", &b);
        assert_eq!(r.code, 0, "add: {}", r.stderr);
        assert_eq!(bed.node(&b, "hotplug-status").as_deref(), Some("connected"));
        assert_eq!(bed.node(&b, "physical-device"), None);
        assert_eq!(bed.node(&b, "node"), None);
        let r = bed.run("remove", &b);
        assert_eq!(r.code, 0, "remove: {}", r.stderr);
    }
    assert!(bed_loops(&bed).is_empty());
}

/// A helper that records its arguments and environment, one file per run,
/// and writes nothing to the store.
fn recording_helper(path: &Path, log_dir: &Path) {
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\nf={dir}/run.$$\necho \"$@\" > $f.args\nenv > $f.env\n",
            dir = log_dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The runs a recording helper made: (argv, environment variable names and values).
fn runs(log_dir: &Path) -> Vec<(String, Vec<(String, String)>)> {
    let mut names: Vec<_> = std::fs::read_dir(log_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "args"));
    names.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    names
        .into_iter()
        .map(|a| {
            let args = std::fs::read_to_string(&a).unwrap().trim_end().to_string();
            let env = std::fs::read_to_string(a.with_extension("env")).unwrap();
            let env = env
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (args, env)
        })
        .collect()
}

#[test]
fn a_helper_runs_with_the_command_and_a_clean_environment() {
    if !can_loop("a_helper_runs_with_the_command_and_a_clean_environment") {
        return;
    }
    let bed = Bed::new("helper");
    let log = bed.dir.join("helper-runs");
    std::fs::create_dir(&log).unwrap();
    recording_helper(&bed.script_dir.join("block-dummy"), &log);
    let b = bed.backend(7, 51712, "dummy", "some-target", "w");
    for action in ["add", "remove"] {
        let r = bed
            .command(&b)
            .arg(action)
            .env("XBH_CANARY", "must-not-leak")
            .output()
            .unwrap();
        assert_eq!(
            r.status.code(),
            Some(0),
            "{action}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let runs = runs(&log);
    assert_eq!(
        runs.len(),
        2,
        "the helper ran once for add and once for remove"
    );
    for ((args, env), action) in runs.iter().zip(["add", "remove"]) {
        assert_eq!(args, action);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ACTION"), Some(action));
        assert_eq!(get("XENBUS_PATH"), Some(b.as_str()));
        assert_eq!(get("XENBUS_TYPE"), Some("vbd"));
        assert_eq!(get("XENBUS_BASE_PATH"), Some("backend"));
        assert_eq!(get("XEN_SCRIPT_DIR"), bed.script_dir.to_str());
        assert!(get("PATH").is_some());
        // Nothing else of ours or the caller's; the shell adds PWD and such.
        let allowed = [
            "ACTION",
            "XENBUS_PATH",
            "XENBUS_TYPE",
            "XENBUS_BASE_PATH",
            "XEN_SCRIPT_DIR",
            "XENSTORED_PATH",
            "PATH",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
        ];
        for (k, _) in env {
            assert!(
                allowed.contains(&k.as_str()),
                "{k} leaked into the helper's environment"
            );
        }
    }
    // The helper wrote nothing, and neither did we on its behalf.
    assert_eq!(bed.node(&b, "hotplug-status"), None);
    assert_eq!(bed.node(&b, "physical-device"), None);
}

#[test]
fn a_type_that_is_not_a_plain_name_runs_nothing() {
    if !can_loop("a_type_that_is_not_a_plain_name_runs_nothing") {
        return;
    }
    let bed = Bed::new("helper-name");
    let log = bed.dir.join("helper-runs");
    std::fs::create_dir(&log).unwrap();
    // Scripts that an unchecked `block-$type` would reach.
    std::fs::create_dir(bed.script_dir.join("block-..")).unwrap();
    recording_helper(&bed.script_dir.join("block-../x"), &log);
    recording_helper(&bed.script_dir.join("block-a b"), &log);
    for (i, ty) in ["../x", "a b"].into_iter().enumerate() {
        let b = bed.backend(7 + i as u32, 51712, ty, "target", "w");
        let r = bed.run("add", &b);
        assert_refused(&bed, &b, &r, "error", &[ty]);
        let r = bed.run("remove", &b);
        assert_eq!(r.code, 1, "remove of type {ty:?}");
    }
    assert!(runs(&log).is_empty(), "no helper was run");
}

#[test]
fn a_missing_helper_is_an_error() {
    if !can_loop("a_missing_helper_is_an_error") {
        return;
    }
    let bed = Bed::new("helper-missing");
    let b = bed.backend(7, 51712, "nosuch", "target", "w");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "error", &["block-nosuch"]);
}

#[test]
fn a_failing_helper_fails_the_add() {
    if !can_loop("a_failing_helper_fails_the_add") {
        return;
    }
    let bed = Bed::new("helper-fails");
    let script = bed.script_dir.join("block-broken");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = bed.backend(7, 51712, "broken", "target", "w");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "error", &["block-broken"]);
}

#[test]
fn a_helper_reaches_the_store_the_hotplug_run_was_given() {
    if !can_loop("a_helper_reaches_the_store_the_hotplug_run_was_given") {
        return;
    }
    let bed = Bed::new("helper-store");
    // The helper asks the store, as block-iscsi's xenstore-read would, and
    // reports what it read.
    let script = bed.script_dir.join("block-storeread");
    let out = bed.dir.join("read.out");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{{ echo \"$XENSTORED_PATH|$XENSTORED_RUNDIR\"; \
             xenstore-read \"$XENBUS_PATH/params\" 2>&1; }} > {out}\n",
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = bed.backend(7, 51712, "storeread", "target", "w");
    let r = bed
        .command(&b)
        .env("XENSTORED_RUNDIR", &bed.dir)
        .arg("add")
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let got = std::fs::read_to_string(&out).unwrap();
    let mut lines = got.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{}|{}", bed.sim.socket_path().display(), bed.dir.display()).as_str())
    );
    if Path::new("/usr/bin/xenstore-read").exists() {
        assert_eq!(lines.next(), Some("target"), "{got}");
    }
}
