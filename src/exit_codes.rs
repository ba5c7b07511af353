//! The process exit status.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Success,
    /// A failed add or remove (hotplug-status says why where it could be written).
    Failure,
    /// Bad command line or environment: nothing was done.
    Usage,
}

impl From<ExitCode> for i32 {
    fn from(c: ExitCode) -> i32 {
        match c {
            ExitCode::Success => 0,
            ExitCode::Failure => 1,
            ExitCode::Usage => 2,
        }
    }
}

impl ExitCode {
    pub fn is_success(self) -> bool {
        self == ExitCode::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(i32::from(ExitCode::Success), 0);
        assert_eq!(i32::from(ExitCode::Failure), 1);
        assert_eq!(i32::from(ExitCode::Usage), 2);
        assert!(ExitCode::Success.is_success());
    }
}
