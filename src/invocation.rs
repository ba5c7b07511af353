//! How the script is invoked: the stock scripts' conventions (`KEY=VALUE`
//! arguments are variables, the first argument without `=` is the command,
//! udev's ACTION when there is none) and the hotplug environment
//! (XENBUS_PATH, XENBUS_TYPE, XENBUS_BASE_PATH, XEN_SCRIPT_DIR).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub const DEFAULT_SCRIPT_DIR: &str = "/etc/xen/scripts";
const DOM0_HOME: &str = "/local/domain/0/";

/// The variables of one run: the environment, overridden by `KEY=VALUE`
/// arguments. A list searched from its end (the last setting wins, as a
/// map's insert would have it): a run reads half a dozen names, and
/// hashing every variable of the environment into a map cost more than
/// the searches (5 % of a file add's instructions).
#[derive(Clone, Debug, Default)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn from_env() -> Vars {
        // A value that is not UTF-8 is kept (lossily) rather than dropped,
        // so that a mangled XENBUS_PATH is reported as what it is, not as
        // unset; the U+FFFD it gains fails every check a path must pass.
        Vars(
            std::env::vars_os()
                .filter_map(|(k, v)| {
                    Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))
                })
                .collect(),
        )
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.0.push((k.to_string(), v.to_string()));
    }

    /// The value, None when unset or empty (as `${X:-}` reads it).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Splits argv (without argv[0]) into what clap parses and the `KEY=VALUE`
/// variables: like xen-script-common.sh's evalVariables, an argument with
/// `=` after its first character is a variable; options (`-x`, `--x=y`)
/// stay for clap.
pub fn split_args(
    args: impl IntoIterator<Item = OsString>,
) -> (Vec<OsString>, Vec<(String, String)>) {
    let mut rest = Vec::new();
    let mut vars = Vec::new();
    for a in args {
        let pair = a.to_str().and_then(|s| {
            if s.starts_with('-') {
                return None;
            }
            let (k, v) = s.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        });
        match pair {
            Some(p) => vars.push(p),
            None => rest.push(a),
        }
    }
    (rest, vars)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "add" => Some(Action::Add),
            "remove" => Some(Action::Remove),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
        }
    }
}

/// A bad command line or environment (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// Everything an add or remove needs to know about its invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub action: Action,
    /// XENBUS_PATH as the store is asked for it (relative or absolute).
    pub backend: String,
    /// The backend relative to its domain's home, e.g. `backend/vbd/5/51728`:
    /// the name our loop devices are tagged with.
    pub key: String,
    /// Where the other backends of this type live (`backend/vbd`, in the
    /// same relative/absolute form as `backend`).
    pub scan_root: String,
    /// The frontend domain and device id, from the path.
    pub domid: u32,
    pub devid: u32,
    pub script_dir: PathBuf,
    /// The hotplug variables, passed on to a block-TYPE helper.
    pub hotplug_env: Vec<(String, String)>,
}

fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Splits "/local/domain/N/" off an absolute path; dom0's home becomes "".
fn split_home(p: &str) -> (String, &str) {
    if let Some(rest) = p.strip_prefix("/local/domain/") {
        if let Some((dom, rel)) = rest.split_once('/') {
            if !dom.is_empty() && dom.bytes().all(|c| c.is_ascii_digit()) {
                let home = format!("/local/domain/{dom}/");
                return (
                    if home == DOM0_HOME {
                        String::new()
                    } else {
                        home
                    },
                    rel,
                );
            }
        }
    }
    (String::new(), p)
}

fn number(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Invocation {
    pub fn new(action: Action, vars: &Vars) -> Result<Invocation, UsageError> {
        let raw = vars.get("XENBUS_PATH").ok_or_else(|| {
            UsageError(
                "XENBUS_PATH is not set; it names the backend, e.g. backend/vbd/5/51728".into(),
            )
        })?;
        let bad = |why: &str| UsageError(format!("XENBUS_PATH {raw:?} {why}"));
        if raw.len() > 256 || !raw.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(bad("is not a xenstore backend path"));
        }
        let trimmed = raw.trim_end_matches('/');
        let (home, rel) = split_home(trimmed);
        if rel.starts_with('/') {
            return Err(bad("is not under a domain's home /local/domain/N"));
        }
        let parts: Vec<&str> = rel.split('/').collect();
        let [base @ .., ty, dom, dev] = parts.as_slice() else {
            return Err(bad("is not of the form BASE/TYPE/DOMID/DEVID"));
        };
        let base = base.join("/");
        let want_type = vars.get("XENBUS_TYPE").unwrap_or(ty);
        let want_base = vars
            .get("XENBUS_BASE_PATH")
            .map(|b| split_home(b.trim_end_matches('/')).1.to_string())
            .unwrap_or_else(|| base.clone());
        if !is_plain(ty) || *ty != want_type {
            return Err(bad(&format!("is not a {want_type} backend")));
        }
        if base != want_base || base.is_empty() || !base.split('/').all(is_plain) {
            return Err(bad(&format!("is not under XENBUS_BASE_PATH {want_base:?}")));
        }
        let domid = number(dom, 5).ok_or_else(|| bad("has no numeric domain id"))?;
        let devid = number(dev, 10).ok_or_else(|| bad("has no numeric device id"))?;
        let key = format!("{base}/{ty}/{domid}/{devid}");
        let backend = format!("{home}{base}/{ty}/{dom}/{dev}");
        let script_dir = PathBuf::from(vars.get("XEN_SCRIPT_DIR").unwrap_or(DEFAULT_SCRIPT_DIR));
        let hotplug_env = vec![
            ("XENBUS_PATH".to_string(), backend.clone()),
            ("XENBUS_TYPE".to_string(), ty.to_string()),
            ("XENBUS_BASE_PATH".to_string(), format!("{home}{base}")),
            (
                "XEN_SCRIPT_DIR".to_string(),
                script_dir.to_string_lossy().into_owned(),
            ),
        ];
        Ok(Invocation {
            action,
            scan_root: format!("{home}{base}/{ty}"),
            key: if home.is_empty() {
                key
            } else {
                format!("{home}{key}")
            },
            backend,
            domid,
            devid,
            script_dir,
            hotplug_env,
        })
    }

    /// The path of a node of this backend.
    pub fn node(&self, name: &str) -> String {
        format!("{}/{}", self.backend, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_overrides_the_environment_and_the_last_setting_wins() {
        let mut v = Vars::default();
        v.set("XENBUS_PATH", "backend/vbd/1/51712");
        v.set("XENBUS_TYPE", "vbd");
        v.set("XENBUS_PATH", "backend/vbd/2/51712");
        assert_eq!(v.get("XENBUS_PATH"), Some("backend/vbd/2/51712"));
        assert_eq!(v.get("XENBUS_TYPE"), Some("vbd"));
        assert_eq!(v.get("ACTION"), None);
        // Set but empty reads as unset, whichever setting is last.
        v.set("XENBUS_TYPE", "");
        assert_eq!(v.get("XENBUS_TYPE"), None);
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in pairs {
            v.set(k, val);
        }
        v
    }

    #[test]
    fn splits_variables_from_arguments() {
        let args = [
            "XENBUS_PATH=backend/vbd/5/51728",
            "add",
            "-v",
            "--lock-timeout=3",
            "=x",
            "a=b=c",
        ]
        .map(OsString::from);
        let (rest, v) = split_args(args);
        assert_eq!(
            rest,
            ["add", "-v", "--lock-timeout=3", "=x"].map(OsString::from)
        );
        assert_eq!(
            v,
            vec![
                ("XENBUS_PATH".into(), "backend/vbd/5/51728".into()),
                ("a".into(), "b=c".into())
            ]
        );
    }

    #[test]
    fn libxl_environment() {
        let v = vars(&[
            ("XENBUS_PATH", "backend/vbd/5/51728"),
            ("XENBUS_TYPE", "vbd"),
            ("XENBUS_BASE_PATH", "backend"),
        ]);
        let i = Invocation::new(Action::Add, &v).unwrap();
        assert_eq!(i.backend, "backend/vbd/5/51728");
        assert_eq!(i.key, "backend/vbd/5/51728");
        assert_eq!(i.scan_root, "backend/vbd");
        assert_eq!((i.domid, i.devid), (5, 51728));
        assert_eq!(i.node("params"), "backend/vbd/5/51728/params");
        assert_eq!(i.script_dir, PathBuf::from("/etc/xen/scripts"));
    }

    #[test]
    fn absolute_dom0_path_is_the_same_backend() {
        let v = vars(&[("XENBUS_PATH", "/local/domain/0/backend/vbd/5/51728")]);
        let i = Invocation::new(Action::Remove, &v).unwrap();
        assert_eq!(i.key, "backend/vbd/5/51728");
        assert_eq!(i.backend, "backend/vbd/5/51728");
        let d = vars(&[("XENBUS_PATH", "/local/domain/3/backend/vbd/5/7/")]);
        let i = Invocation::new(Action::Add, &d).unwrap();
        assert_eq!(i.backend, "/local/domain/3/backend/vbd/5/7");
        assert_eq!(i.scan_root, "/local/domain/3/backend/vbd");
    }

    #[test]
    fn refuses_what_is_not_a_backend_of_this_type() {
        for (p, t, b) in [
            ("", "", ""),
            ("backend/vbd/5", "", ""),
            ("backend/vif/5/0", "vbd", ""),
            ("backend/vbd/x/0", "", ""),
            ("backend/vbd/5/0", "", "elsewhere"),
            ("/etc/passwd/vbd/5/0", "", ""),
            ("backend/../vbd/5/0", "", ""),
            ("backend/vbd/5/0 1", "", ""),
            ("backend/vbd/5/99999999999", "", ""),
            ("/local/domain/0//vbd/5/0", "", ""),
        ] {
            let v = vars(&[
                ("XENBUS_PATH", p),
                ("XENBUS_TYPE", t),
                ("XENBUS_BASE_PATH", b),
            ]);
            assert!(
                Invocation::new(Action::Add, &v).is_err(),
                "{p:?} {t:?} {b:?}"
            );
        }
    }

    #[test]
    fn actions() {
        assert_eq!(Action::parse("add"), Some(Action::Add));
        assert_eq!(Action::parse("remove"), Some(Action::Remove));
        assert_eq!(Action::parse("online"), None);
    }
}
