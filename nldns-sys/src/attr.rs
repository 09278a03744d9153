//! The members of `union bpf_attr` the commands of [`crate::prog`] read, field for field
//! as in `include/uapi/linux/bpf.h` (each a prefix of the kernel's struct: the fields
//! after it are zero).

/// BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgLoad {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
}

/// BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgAttach {
    pub target_fd: u32,
    pub attach_bpf_fd: u32,
    pub attach_type: u32,
    pub attach_flags: u32,
}

/// BPF_LINK_CREATE, with the tcx member's relative_fd and expected_revision.
#[repr(C)]
#[derive(Default)]
pub(crate) struct LinkCreate {
    pub prog_fd: u32,
    /// `target_fd` or `target_ifindex`: one field in the kernel's union.
    pub target: u32,
    pub attach_type: u32,
    pub flags: u32,
    pub relative_fd: u32,
    pub _pad: u32,
    pub expected_revision: u64,
}

/// BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgQuery {
    /// `target_fd` or `target_ifindex`: one field in the kernel's union.
    pub target: u32,
    pub attach_type: u32,
    pub query_flags: u32,
    pub attach_flags: u32,
    pub prog_ids: u64,
    pub prog_cnt: u32,
    pub _pad: u32,
    pub prog_attach_flags: u64,
    pub link_ids: u64,
    pub link_attach_flags: u64,
    pub revision: u64,
}

/// BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
pub(crate) struct GetFdById {
    pub prog_id: u32,
    pub next_id: u32,
    pub open_flags: u32,
}

/// BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
pub(crate) struct TestRun {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub flags: u32,
    pub cpu: u32,
    pub batch_size: u32,
    pub _pad: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<ProgLoad>(), 72);
        assert_eq!(std::mem::size_of::<ProgAttach>(), 16);
        assert_eq!(std::mem::size_of::<LinkCreate>(), 32);
        assert_eq!(std::mem::size_of::<ProgQuery>(), 64);
        assert_eq!(std::mem::size_of::<GetFdById>(), 12);
        assert_eq!(std::mem::size_of::<TestRun>(), 80);
    }
}

/// BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
pub(crate) struct InfoByFd {
    pub bpf_fd: u32,
    pub info_len: u32,
    pub info: u64,
}
