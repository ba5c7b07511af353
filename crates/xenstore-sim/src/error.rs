//! The errors a xenstored answers with: an ERROR message whose payload is
//! the errno's name, NUL-terminated (xenstored's `xsd_errors`).

/// The errno names this simulator can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    Enoent,
    Einval,
    Eacces,
    Eagain,
    Eexist,
    Ebusy,
    Enospc,
    E2big,
    Enosys,
}

impl Errno {
    /// The name as it goes on the wire, without the NUL.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Enoent => "ENOENT",
            Errno::Einval => "EINVAL",
            Errno::Eacces => "EACCES",
            Errno::Eagain => "EAGAIN",
            Errno::Eexist => "EEXIST",
            Errno::Ebusy => "EBUSY",
            Errno::Enospc => "ENOSPC",
            Errno::E2big => "E2BIG",
            Errno::Enosys => "ENOSYS",
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_c_names() {
        assert_eq!(Errno::Enoent.name(), "ENOENT");
        assert_eq!(Errno::E2big.to_string(), "E2BIG");
    }
}
