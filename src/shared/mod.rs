//! Memory shared between processes.

mod memory;
mod value;

pub use memory::SharedMemory;
pub use value::{Array, ArrayGuard, AtomicInt, AtomicValue, RawArray, RawValue, Value, ValueGuard};
