//! The kernel's loop-device interface, as <linux/loop.h> and <linux/fs.h>
//! define it: the `#[repr(C)]` structs field for field, the ioctls (named
//! after the kernel's, one line each), the flag constants. Nothing here
//! knows about our records or tags.

#![allow(non_camel_case_types)]

/// LO_NAME_SIZE: lo_file_name and lo_crypt_name, NUL included.
pub const LO_NAME_SIZE: usize = 64;
/// LO_KEY_SIZE.
pub const LO_KEY_SIZE: usize = 32;
/// LO_FLAGS_READ_ONLY.
pub const LO_FLAGS_READ_ONLY: u32 = 1;

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct loop_info64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; LO_NAME_SIZE],
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    pub lo_init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h>.
#[repr(C)]
pub struct loop_config {
    pub fd: u32,
    pub block_size: u32,
    pub info: loop_info64,
    pub __reserved: [u64; 8],
}

impl loop_info64 {
    pub const ZERO: Self = Self {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; LO_KEY_SIZE],
        lo_init: [0; 2],
    };
}

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_int_bad!(loop_ctl_add, 0x4C80);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, loop_config);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, loop_info64);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, loop_info64);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
nix::ioctl_read!(blkgetdiskseq, 0x12, 128, u64);

/// NUL-padded copy of `s`, cut to 63 bytes so the last byte stays NUL.
pub fn name_field(s: &[u8]) -> [u8; LO_NAME_SIZE] {
    let mut field = [0; LO_NAME_SIZE];
    for (f, c) in field.iter_mut().take(LO_NAME_SIZE - 1).zip(s) {
        *f = *c;
    }
    field
}

/// A name field's text, up to its first NUL.
pub fn field_str(field: &[u8]) -> String {
    let text = field.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<loop_info64>(), 232);
        assert_eq!(std::mem::size_of::<loop_config>(), 304);
    }
}
