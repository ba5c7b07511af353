//! A kernel release ("4.1", "5.15.0-rc1", "4.1.12-124.48.6.el6uek") as
//! (major, minor): one parser for the old-kernel wrapper
//! (examples/oldkernel.rs, which includes this file) and the test bed's
//! switch (`kernel`).

/// (major, minor) of `s`; None when it does not start "X.Y".
pub fn parse_release(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}
