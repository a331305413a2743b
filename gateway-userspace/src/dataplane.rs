//! The kernel data plane: load, attach, pin and program the eBPF maps.
