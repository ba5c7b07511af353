//! Loop devices: attach an image, read a device's status, detach.
//!
//! Laid out as systemd's loop-util.c and util-linux's lib/loopdev.c are:
//! the kernel's interface apart (`abi`), one object per device
//! (`device`: `LoopDevice`, `attach`, the `Attached` guard), scans over the
//! bound devices (`scan`). What is ours alone (the records under /run, the
//! tag, the remove decision) is in `records`.
//!
//! Written over nix's ioctl macros rather than the `loopdev` crates: those run
//! bindgen (so need libclang) at build time, and have neither LOOP_CONFIGURE
//! nor BLKGETDISKSEQ.
//!
//! Our ownership tag is given as lo_crypt_name, but recent kernels (checked on
//! 6.18) no longer keep it: LOOP_GET_STATUS64 returns it empty. So the tag is
//! also kept in a record file in the records directory (`records`), which
//! holds the backing file's dev and inode and the device's diskseq at attach.
//! Every binding we make carries `xbh-pending:ID` as its lo_file_name (the
//! kernel keeps it; the backing file's path is read from sysfs), ID being
//! unique in this boot (pid, process start time, a counter). Before binding,
//! the tag goes to a pending record `loopN.ID.pending`; once bound, a
//! `binding DEV INO SEQ` line is appended to it and it is renamed to the
//! final record `loopN.SEQ` (SEQ the diskseq in hex; `loopN.ID` on kernels
//! before 5.15: `records::entry::record_name`; earlier versions wrote the
//! binding as the first line of a file of its own), which keeps the line
//! `id ID`. A record describes a binding only when the binding's
//! lo_file_name names its ID: a binding made by anyone else (an admin's
//! `losetup` of the same image, on the same loop number, after ours was
//! detached behind our back) has its path there and never
//! matches, also on kernels without diskseq. A record also names its boot
//! (`boot UUID`): one from an earlier boot is never believed.
//! A line `store PATH` names the xenstore the attach served when it was not
//! the host's own (a test's simulator), so that `cleanup` against one store
//! never judges the devices of another; `owner PID START` the attaching
//! process, whose add may still be running.
//!
//! Judging a device and detaching it go through one open descriptor
//! (`LoopDevice`): while it is open the binding cannot change (a detach
//! only sets autoclear until the last opener closes), so what was judged is
//! what gets detached.

mod abi;
mod device;
mod scan;
#[cfg(test)]
mod tests;

pub use device::{
    attach, detach, device_number, diskseq, parse_number, prune_records, record, status,
    AttachOptions, Attached, LoopDevice, LoopStatus, Reserve,
};
pub use scan::{all_bound, bound_devices, recorded_for, users_of, users_of_image};

pub use crate::records::Record;

/// Where the ownership records are kept by default (see `records`).
pub const RECORD_DIR: &str = crate::records::DEFAULT_DIR;
