//! The `mode` node: how a guest may use its disk.

/// Canonical access mode, as block-common.sh's canonicalise_mode reads
/// `mode`: no `w` is read-only; `w` is read-write; `w` with `!` is
/// read-write with every sharing check skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    ReadOnly,
    ReadWrite,
    /// `w!`: the admin takes responsibility for sharing.
    Unchecked,
}

impl Mode {
    pub fn parse(s: &str) -> Mode {
        if !s.contains('w') {
            Mode::ReadOnly
        } else if s.contains('!') {
            Mode::Unchecked
        } else {
            Mode::ReadWrite
        }
    }

    pub fn writable(self) -> bool {
        self != Mode::ReadOnly
    }

    /// The stock script's one-letter spelling: r, w or !.
    pub fn letter(self) -> &'static str {
        match self {
            Mode::ReadOnly => "r",
            Mode::ReadWrite => "w",
            Mode::Unchecked => "!",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::ReadOnly => "read-only",
            Mode::ReadWrite => "read-write",
            Mode::Unchecked => "read-write without sharing checks",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_like_block_common() {
        for (s, m) in [
            ("r", Mode::ReadOnly),
            ("ro", Mode::ReadOnly),
            ("", Mode::ReadOnly),
            ("r!", Mode::ReadOnly),
            ("w", Mode::ReadWrite),
            ("rw", Mode::ReadWrite),
            ("w!", Mode::Unchecked),
            ("rw!", Mode::Unchecked),
            ("!w", Mode::Unchecked),
        ] {
            assert_eq!(Mode::parse(s), m, "mode {s:?}");
        }
        assert!(!Mode::ReadOnly.writable());
        assert!(Mode::Unchecked.writable());
        assert_eq!(Mode::ReadWrite.letter(), "w");
    }
}
