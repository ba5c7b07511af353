//! Diagnose's output: text for a person (wrapped to 80 columns, colour only
//! on a terminal and without NO_COLOR) or JSON with stable field names.
//! Every value in the text passes through `escape` (a guest's escape
//! sequence or a newline in a value is shown spelt out, never raw); JSON
//! escapes by itself.

use std::fmt::Write as _;

use super::lockinfo::LockFacts;
use super::model::{Device, Report};
use crate::escape::escape;

const WIDTH: usize = 80;

/// Wraps `text` at spaces to WIDTH: the first line after `first`, the
/// others indented by `indent` spaces. A word longer than a line (a path)
/// is kept whole.
pub fn wrap(first: &str, indent: usize, text: &str) -> String {
    let text = escape(text);
    let mut out = String::from(first);
    let mut col = first.chars().count();
    let mut line_start = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let n = word.chars().count();
        if !line_start && col + 1 + n > WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
            line_start = true;
        }
        if !line_start {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += n;
        line_start = false;
    }
    out.push('\n');
    out
}

struct Paint(bool);

impl Paint {
    fn verdict(&self, healthy: bool, s: &str) -> String {
        match (self.0, healthy) {
            (false, _) => s.to_string(),
            (true, true) => format!("\x1b[32m{s}\x1b[0m"),
            (true, false) => format!("\x1b[1;31m{s}\x1b[0m"),
        }
    }
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn state(v: &Option<String>, name: Option<&'static str>) -> String {
    match (v, name) {
        (Some(s), Some(n)) => format!("{s} {n}"),
        (Some(s), None) => s.clone(),
        (None, _) => "-".into(),
    }
}

/// One line for the whole-domain or whole-host listing.
fn summary(d: &Device, paint: &Paint) -> String {
    let head = format!(
        "{:<22} {:<5} {:<3} {:<10}",
        escape(&d.backend),
        escape(or_dash(&d.toolstack.ty)),
        escape(or_dash(&d.toolstack.mode)),
        escape(or_dash(&d.hotplug.status))
    );
    let room = WIDTH.saturating_sub(head.chars().count() + 1).max(10);
    let mut v = escape(&d.verdict.sentence).into_owned();
    if v.chars().count() > room {
        v = v.chars().take(room - 3).collect::<String>() + "...";
    }
    format!("{head} {}\n", paint.verdict(d.verdict.healthy, &v))
}

fn details(d: &Device, log_file: &str, paint: &Paint) -> String {
    let t = &d.toolstack;
    let h = &d.hotplug;
    let mut o = String::new();
    let dev = t
        .dev
        .as_deref()
        .map(|x| format!(", {}", escape(x)))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "{} (domain {}, device {}{dev})",
        escape(&d.backend),
        d.domid,
        d.devid
    );
    let label = if d.verdict.healthy {
        "healthy"
    } else {
        "NOT HEALTHY"
    };
    let _ = write!(o, "  {}", paint.verdict(d.verdict.healthy, label));
    if !d.verdict.healthy {
        o.push('\n');
        o.push_str(&wrap("  what is wrong: ", 17, &d.verdict.sentence));
        if let Some(a) = &d.verdict.action {
            o.push_str(&wrap("  what to do:    ", 17, a));
        }
    } else {
        o.push('\n');
    }
    if !d.exists {
        return o;
    }
    o.push_str("  the toolstack wrote:\n");
    o.push_str(&wrap(
        "    ",
        6,
        &format!(
            "type {}, mode {}, params {}",
            or_dash(&t.ty),
            or_dash(&t.mode),
            or_dash(&t.params)
        ),
    ));
    o.push_str(&wrap(
        "    ",
        6,
        &format!(
            "backend state {}; frontend {} (domain {}) state {}",
            state(&t.state, t.state_name),
            or_dash(&t.frontend),
            or_dash(&t.frontend_id),
            state(&t.frontend_state, t.frontend_state_name)
        ),
    ));
    o.push_str("  the hotplug script wrote:\n");
    o.push_str(&wrap(
        "    ",
        6,
        &format!("hotplug-status {}", or_dash(&h.status)),
    ));
    if let Some(e) = &h.error {
        o.push_str(&wrap("    hotplug-error ", 6, e));
    }
    o.push_str(&wrap(
        "    ",
        6,
        &format!(
            "physical-device {}, physical-device-path {}, node {}, diskseq {}",
            or_dash(&h.physical_device),
            or_dash(&h.physical_device_path),
            or_dash(&h.node),
            or_dash(&h.diskseq)
        ),
    ));
    o.push_str("  checks:\n");
    let c = &d.checks;
    if let Some(p) = &c.params {
        let s = match (&p.problem, &p.path) {
            (Some(pr), Some(path)) if p.kind != "invalid" => format!("{path} {pr}"),
            (Some(pr), _) => pr.clone(),
            (None, Some(path)) => match p.kind {
                "phy" => format!("{path} is a block device ({})", or_dash(&p.device)),
                "file" => format!("{path} is a regular file"),
                "helper" => format!("helper script {path} exists"),
                _ => path.clone(),
            },
            (None, None) => "empty (no medium)".into(),
        };
        o.push_str(&wrap("    params: ", 6, &s));
    }
    if let Some(l) = &c.loop_device {
        let s = if !l.bound {
            format!(
                "{}: {}",
                l.device,
                l.not_ours.as_deref().unwrap_or("not attached")
            )
        } else {
            let ro = match l.read_only {
                Some(true) => "read-only",
                _ => "read-write",
            };
            let whose = match (&l.not_ours, l.backs_image) {
                (Some(w), _) => format!("NOT this disk's: {w}"),
                (None, Some(true)) => "backed by the image (device + inode)".into(),
                (None, _) => "serves this backend".into(),
            };
            format!(
                "{} ({}): {}, {ro}, diskseq {}; {whose}",
                l.device,
                or_dash(&l.device_number),
                or_dash(&l.backing_file),
                or_dash(&l.diskseq)
            )
        };
        o.push_str(&wrap("    loop device: ", 6, &s));
    }
    if let Some(m) = c.physical_device_matches {
        let what = if c.loop_device.is_some() {
            "the loop device named by node"
        } else {
            "the device params names"
        };
        let s = if m {
            format!("matches {what}")
        } else {
            format!("DOES NOT MATCH {what}")
        };
        o.push_str(&format!("    physical-device: {s}\n"));
    }
    if c.conflicts.is_empty() {
        o.push_str("    other users in a conflicting mode: none\n");
    } else {
        for x in &c.conflicts {
            o.push_str(&wrap("    conflicting user: ", 6, &x.description));
        }
    }
    if d.log.is_empty() {
        o.push_str(&wrap(
            "  log: ",
            4,
            &format!("no lines about this backend in {log_file}"),
        ));
    } else {
        o.push_str(&wrap(
            "  log: ",
            4,
            &format!("the last lines about this backend in {log_file}:"),
        ));
        for l in &d.log {
            o.push_str(&wrap("    ", 6, l));
        }
    }
    o
}

fn lock_line(l: &LockFacts) -> String {
    match l.holder() {
        None => wrap("hotplug lock: ", 4, &format!("{} is free", l.path)),
        Some(h) => {
            let since = l
                .held_seconds
                .map(|s| format!(" for {s} s"))
                .unwrap_or_default();
            let cmd = h
                .command
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            let gone = if h.alive { "" } else { " (exited)" };
            let kept: Vec<String> = l
                .open_by
                .iter()
                .filter(|o| !l.holders.iter().any(|h| h.pid == o.pid))
                .map(|o| o.pid.to_string())
                .collect();
            let kept = if kept.is_empty() {
                String::new()
            } else {
                format!("; open in pid {}", kept.join(", "))
            };
            // File adds of different images hold it shared, side by side.
            let others = l.holders.iter().filter(|o| !o.waiting).count() - 1;
            let sharing = if others > 0 {
                format!(" and {others} more sharing it")
            } else {
                String::new()
            };
            wrap(
                "hotplug lock: ",
                4,
                &format!(
                    "{} is held by pid {}{cmd}{gone}{sharing}{since}, {} waiting{kept}",
                    l.path,
                    h.pid,
                    l.waiters()
                ),
            )
        }
    }
}

/// The text report.
pub fn text(r: &Report, log_file: &str, colour: bool) -> String {
    let paint = Paint(colour);
    let mut o = String::new();
    if r.scope == "backend" {
        for d in &r.devices {
            o.push_str(&details(d, log_file, &paint));
        }
    } else if r.devices.is_empty() {
        o.push_str(if r.scope == "domain" {
            "no vbd backends of this domain: check the domain id (xl list)\n"
        } else {
            "no vbd backends on this host\n"
        });
    } else {
        for d in &r.devices {
            o.push_str(&summary(d, &paint));
        }
        for d in r.devices.iter().filter(|d| !d.verdict.healthy) {
            o.push('\n');
            o.push_str(&details(d, log_file, &paint));
        }
    }
    o.push('\n');
    o.push_str(&format!("xenstore: {}\n", r.store));
    o.push_str(&lock_line(&r.lock));
    o
}

/// The JSON report (see README for the fields).
pub fn json(r: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_to_80_columns() {
        let s = wrap("  what to do:   ", 4, &"word ".repeat(40));
        for l in s.lines() {
            assert!(l.chars().count() <= WIDTH, "{l:?}");
        }
        assert!(s.lines().nth(1).unwrap().starts_with("    word"));
        // A path longer than a line stays whole.
        let long = format!("/{}", "p".repeat(100));
        assert!(wrap("x ", 2, &long).contains(&long));
    }
}
