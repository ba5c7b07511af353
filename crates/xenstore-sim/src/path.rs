//! Node names as xenstored checks and resolves them (`is_valid_nodename`
//! and `canonicalize` in tools/xenstored/core.c). Every connection here is
//! dom0, so a relative name lives under /local/domain/0.

use super::error::Errno;

/// Where a relative name from dom0 is resolved.
pub const HOME: &str = "/local/domain/0";
/// XENSTORE_ABS_PATH_MAX.
pub const ABS_PATH_MAX: usize = 3072;

/// A name a client sent, resolved to an absolute path. `relative` is kept
/// because watch events must come back in the form the watch was set in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub abs: String,
    pub relative: bool,
}

/// Resolves and validates a node name; anything xenstored would refuse is
/// EINVAL. Names are bytes on the wire, so non-UTF-8 is refused here too.
pub fn resolve(raw: &[u8]) -> Result<Name, Errno> {
    let s = std::str::from_utf8(raw).map_err(|_| Errno::Einval)?;
    let relative = !s.starts_with('/');
    let abs = if relative {
        format!("{HOME}/{s}")
    } else {
        s.to_owned()
    };
    let valid = valid_chars(&abs)
        && (abs == "/" || !abs.ends_with('/'))
        && !abs.contains("//")
        && abs.len() <= ABS_PATH_MAX;
    if valid {
        Ok(Name { abs, relative })
    } else {
        Err(Errno::Einval)
    }
}

/// Like `resolve`, but also accepts the special watch names such as
/// "@releaseDomain", which name no node and are never relative.
pub fn resolve_watch(raw: &[u8]) -> Result<Name, Errno> {
    if !raw.starts_with(b"@") {
        return resolve(raw);
    }
    if raw.len() > ABS_PATH_MAX || !raw.iter().all(|&b| valid_char(b)) {
        return Err(Errno::Einval);
    }
    Ok(Name {
        abs: String::from_utf8_lossy(raw).into_owned(),
        relative: false,
    })
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-/_@".contains(&b)
}

fn valid_chars(s: &str) -> bool {
    s.bytes().all(valid_char)
}

/// True if `path` is `ancestor` or lies below it.
pub fn is_at_or_under(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// The parent of an absolute path; None for "/".
pub fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        _ if path == "/" => None,
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The prefix under which every descendant of `path` sorts.
pub fn child_prefix(path: &str) -> String {
    if path == "/" {
        "/".to_owned()
    } else {
        format!("{path}/")
    }
}

/// `abs` as a client that spoke relatively expects to see it.
pub fn as_seen(abs: &str, relative: bool) -> String {
    match abs.strip_prefix(HOME).and_then(|r| r.strip_prefix('/')) {
        Some(rel) if relative => rel.to_owned(),
        _ => abs.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_resolve_under_dom0_home() {
        let n = resolve(b"backend/vbd/5").unwrap();
        assert_eq!(n.abs, "/local/domain/0/backend/vbd/5");
        assert!(n.relative);
        assert_eq!(as_seen(&n.abs, true), "backend/vbd/5");
        assert_eq!(as_seen(&n.abs, false), n.abs);
        assert!(!resolve(b"/tool").unwrap().relative);
    }

    #[test]
    fn invalid_names_are_einval() {
        for bad in [
            &b"/a//b"[..],
            b"/a/",
            b"",
            b"/a b",
            b"/a\xff",
            b"/a.b",
            b"a/",
        ] {
            assert_eq!(resolve(bad), Err(Errno::Einval), "{bad:?}");
        }
        assert!(resolve(b"/").is_ok());
        assert!(resolve(b"/A-z_0@9/x").is_ok());
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
        assert!(resolve(long.as_bytes()).is_ok());
        let too_long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert_eq!(resolve(too_long.as_bytes()), Err(Errno::Einval));
    }

    #[test]
    fn special_watch_names() {
        assert_eq!(
            resolve_watch(b"@releaseDomain").unwrap().abs,
            "@releaseDomain"
        );
        assert_eq!(resolve_watch(b"@a b"), Err(Errno::Einval));
        assert_eq!(
            resolve(b"@releaseDomain").unwrap().abs,
            "/local/domain/0/@releaseDomain"
        );
    }

    #[test]
    fn ancestry() {
        assert!(is_at_or_under("/a/b", "/a"));
        assert!(is_at_or_under("/a", "/a"));
        assert!(!is_at_or_under("/ab", "/a"));
        assert!(is_at_or_under("/a", "/"));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
    }
}
