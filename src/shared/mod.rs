//! Memory shared between processes.

mod memory;

pub use memory::SharedMemory;
