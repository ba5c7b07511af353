//! Device numbers as the `physical-device` node spells them: lowercase hex
//! `major:minor` without padding, as `stat -L -c %t:%T` prints them.

use nix::sys::stat::{major, makedev, minor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u64,
    pub minor: u64,
}

impl DevNum {
    pub fn from_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: major(rdev),
            minor: minor(rdev),
        }
    }

    pub fn rdev(self) -> u64 {
        makedev(self.major, self.minor)
    }

    /// `7:0`, `fe:10`, `103:2`.
    pub fn to_node(self) -> String {
        format!("{:x}:{:x}", self.major, self.minor)
    }

    /// Parses a `physical-device` value; None for anything else.
    pub fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        let hex = |t: &str| {
            if t.is_empty() || t.len() > 8 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
                None
            } else {
                u64::from_str_radix(t, 16).ok()
            }
        };
        Some(DevNum {
            major: hex(a)?,
            minor: hex(b)?,
        })
    }
}

/// A `diskseq` node's value (hex, as add writes it); None for anything else.
/// The one parser of it: remove, cleanup and diagnose all read it here.
pub fn parse_diskseq(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_node())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskseq_is_read_as_add_writes_it() {
        assert_eq!(parse_diskseq("2a"), Some(42));
        assert_eq!(parse_diskseq(" 2A\n"), Some(42));
        assert_eq!(parse_diskseq(&format!("{:x}", u64::MAX)), Some(u64::MAX));
        for bad in ["", "0x2a", "g", "-1", "1 2"] {
            assert_eq!(parse_diskseq(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_like_stat() {
        assert_eq!(DevNum { major: 7, minor: 0 }.to_node(), "7:0");
        assert_eq!(
            DevNum {
                major: 254,
                minor: 16
            }
            .to_node(),
            "fe:10"
        );
        assert_eq!(
            DevNum {
                major: 259,
                minor: 2
            }
            .to_node(),
            "103:2"
        );
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            DevNum::parse("fe:10"),
            Some(DevNum {
                major: 254,
                minor: 16
            })
        );
        assert_eq!(
            DevNum::parse("FE:10"),
            Some(DevNum {
                major: 254,
                minor: 16
            })
        );
        for bad in [
            "",
            "7",
            ":0",
            "7:",
            "7:0:1",
            "x:1",
            "-1:2",
            "123456789:0",
            "7 :0",
        ] {
            assert_eq!(DevNum::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rdev_round_trip() {
        let d = DevNum {
            major: 259,
            minor: 70000,
        };
        assert_eq!(DevNum::from_rdev(d.rdev()), d);
    }
}
