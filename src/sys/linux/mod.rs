//! Linux backend. See the contract in `sys/mod.rs`.

pub(crate) mod entry;
pub(crate) mod fd;
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod shm;
pub(crate) mod sigbus;

pub(crate) use fd::*;
pub(crate) use process::*;
