//! Our tag and who may detach a device: the tag every loop device we
//! attach carries (`xbh:` and the backend it serves), and `decide`, the
//! remove decision over the facts gathered about a device (its status,
//! the diskseq recorded at add and now, the image, the store its record
//! names).

use crate::loopdev::LoopStatus;

/// Prefix of the tag on the loop devices we attach.
pub const TAG_PREFIX: &str = "xbh:";

/// The tag of the loop device serving backend `key` (at most 63 bytes: the
/// kernel keeps 64 with the NUL).
pub fn tag(key: &str) -> String {
    let mut t = format!("{TAG_PREFIX}{key}");
    t.truncate(63);
    t
}

/// Whether remove may detach a loop device, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Detach,
    Leave(String),
}

/// Decides on the loop device `st` named by the backend's `node`. `tag` is
/// this backend's tag, `recorded` the diskseq written at add, `current` the
/// device's diskseq now, `image` the (dev, inode) of `params` now, if it
/// still exists, `other_store` the xenstore the device's record says it
/// serves when that is not this one.
pub fn decide(
    st: &LoopStatus,
    tag: &str,
    recorded: Option<u64>,
    current: Option<u64>,
    image: Option<(u64, u64)>,
    other_store: Option<&str>,
) -> Decision {
    // The tag names a backend path, which another store (a test's
    // simulator) has too; without diskseq (kernels before 5.15) nothing
    // else would tell its device from ours.
    if let Some(s) = other_store {
        let s = if s.is_empty() {
            "the host's xenstore"
        } else {
            s
        };
        return Decision::Leave(format!("it serves a backend of {s}"));
    }
    if let (Some(r), Some(c)) = (recorded, current) {
        if r != c {
            return Decision::Leave(format!(
                "it was re-attached since this disk was added (diskseq {c:x}, recorded {r:x})"
            ));
        }
    }
    if let Some(serves) = st.tag.strip_prefix(TAG_PREFIX) {
        if st.tag != tag {
            return Decision::Leave(format!("it now serves {serves}"));
        }
        return Decision::Detach;
    }
    // Untagged: attached by the stock script before the switch (or by
    // someone else). Only the image's identity can tell.
    match image {
        Some(id) if id == (st.backing_dev, st.backing_inode) => Decision::Detach,
        Some(_) => Decision::Leave(format!(
            "it is backed by {}, not by this disk's image",
            st.backing_file
        )),
        None => Decision::Leave("the image is gone and the device carries no tag of ours".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devnum::DevNum;

    fn st(tag: &str, dev: u64, ino: u64) -> LoopStatus {
        LoopStatus {
            number: 3,
            device: DevNum { major: 7, minor: 3 },
            backing_dev: dev,
            backing_inode: ino,
            read_only: false,
            tag: tag.into(),
            backing_file: "/disk/a.img".into(),
        }
    }

    #[test]
    fn tag_is_bounded() {
        assert_eq!(tag("backend/vbd/5/51728"), "xbh:backend/vbd/5/51728");
        assert_eq!(tag(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn detaches_only_its_own_device() {
        let me = tag("backend/vbd/5/51728");
        assert_eq!(
            decide(&st(&me, 1, 2), &me, Some(9), Some(9), None, None),
            Decision::Detach
        );
        assert_eq!(
            decide(&st(&me, 1, 2), &me, None, Some(9), Some((1, 2)), None),
            Decision::Detach
        );
        // Re-attached since: diskseq moved on.
        assert!(matches!(
            decide(&st(&me, 1, 2), &me, Some(9), Some(10), Some((1, 2)), None),
            Decision::Leave(_)
        ));
        // The same backend path in another store: never ours, whatever
        // the tag, with or without diskseq.
        for store in ["/tmp/other/xenstored.sock", ""] {
            assert!(matches!(
                decide(&st(&me, 1, 2), &me, None, None, Some((1, 2)), Some(store)),
                Decision::Leave(_)
            ));
        }
        // Re-used by another backend of ours.
        let other = tag("backend/vbd/6/51728");
        assert!(matches!(
            decide(&st(&other, 1, 2), &me, None, None, Some((1, 2)), None),
            Decision::Leave(_)
        ));
        // Stock-attached (untagged): by the image's identity only.
        assert_eq!(
            decide(&st("", 1, 2), &me, None, None, Some((1, 2)), None),
            Decision::Detach
        );
        assert!(matches!(
            decide(&st("", 1, 3), &me, None, None, Some((1, 2)), None),
            Decision::Leave(_)
        ));
        assert!(matches!(
            decide(&st("", 1, 2), &me, None, None, None, None),
            Decision::Leave(_)
        ));
    }
}
