// Empty library target: nldns-userspace build-depends on this crate so cargo rebuilds it
// when the eBPF sources change. The programs themselves are the `nldns-datapath` binary.
#![no_std]
