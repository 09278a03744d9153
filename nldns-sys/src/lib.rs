//! Raw bpf(2), for what aya 0.14 does not expose (querying and detaching cgroup hooks)
//! and for the tests and benchmarks, which stand in for other dataplanes' programs
//! without a BPF library and must build before the BPF toolchain is installed.
//!
//! The layout follows aya's `sys` module: one `bpf()` wrapper (`syscall::sys_bpf`, the
//! only `unsafe fn`), the parts of `union bpf_attr` each command reads as `#[repr(C)]`
//! structs (`attr`, their sizes checked against the kernel's), and one safe function per
//! command ([`prog`]) that builds its attr from typed arguments and calls the wrapper in
//! a one-line `unsafe` block saying why that attr and its buffers are sound.
//!
//! The numbers are the kernel's ABI (`include/uapi/linux/bpf.h`) and are named as the
//! kernel names them ([`AttachType::BPF_CGROUP_INET4_CONNECT`], ...).

mod attr;
pub mod prog;
mod syscall;
mod types;

pub use prog::{
    link_create, prog_attach, prog_detach, prog_get_fd_by_id, prog_info, prog_load, prog_query,
    prog_query_with_flags, prog_test_run, ProgInfo, Target, TestRun,
};
pub use types::{
    AttachType, Cmd, ProgType, BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, BPF_F_QUERY_EFFECTIVE,
};
