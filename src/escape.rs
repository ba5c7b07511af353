//! Text from outside (xenstore values a guest or a toolstack wrote, image
//! and backing-file names, log lines, other processes' command lines) made
//! harmless before it reaches a terminal or a log: a guest that writes
//! `4\x1b[2J` as its frontend state must not clear the admin's screen, and
//! a newline in a value must not forge a log line that `diagnose` later
//! shows as ours.
//!
//! One function, used by the log sinks (file, syslog, stderr), by
//! `hotplug-error` (xl prints it) and by diagnose's text renderer. JSON
//! output has its own escaping and does not use it. The aim is harmless and
//! readable, not reversible: a backslash is left as it is.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal or a log raw: C0 controls and
/// DEL (escape sequences, newlines), C1 controls (U+0080..U+009F, which some
/// terminals take as CSI and friends), the Unicode line and paragraph
/// separators, and the bidirectional overrides and isolates (which reorder
/// what is shown: "Trojan Source").
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every unsafe character spelt out: `\n`, `\r`, `\t`, `\x1b`
/// for the other C0 controls and DEL, `\u{85}` beyond ASCII.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if !unsafe_char(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn what_a_terminal_or_a_log_is_shown() {
        let table = [
            ("plain /disk/a.img", "plain /disk/a.img"),
            ("", ""),
            ("4\x1b[2J\x1b[H", "4\\x1b[2J\\x1b[H"),
            (
                "a\nxen-block-hotplug: healthy",
                "a\\nxen-block-hotplug: healthy",
            ),
            (
                "cr\rtab\tnul\0bel\x07del\x7f",
                "cr\\rtab\\tnul\\x00bel\\x07del\\x7f",
            ),
            ("c1 \u{9b}31m and \u{85}", "c1 \\u{9b}31m and \\u{85}"),
            ("line\u{2028}para\u{2029}", "line\\u{2028}para\\u{2029}"),
            (
                "bidi \u{202e}gpj.exe\u{202c}",
                "bidi \\u{202e}gpj.exe\\u{202c}",
            ),
            ("isolate \u{2066}x\u{2069}", "isolate \\u{2066}x\\u{2069}"),
            // Printable text beyond ASCII and backslashes stay as they are.
            ("é 日本 \\x1b", "é 日本 \\x1b"),
        ];
        for (raw, shown) in table {
            assert_eq!(escape(raw), shown, "{raw:?}");
            assert!(!escape(raw).contains(['\n', '\x1b', '\u{9b}']));
        }
    }
}
