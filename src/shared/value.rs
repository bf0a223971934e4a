//! Plain-old-data in shared memory: [`Value`] and [`Array`] with a lock, [`RawValue`] and
//! [`RawArray`] without one, and [`AtomicValue`] for lock-free integers.
//!
//! # Why five types
//! A locked value hands out a guard that dereferences to `&mut T`: a reference straight into memory
//! that other processes share. That is sound only if nobody else touches those bytes while the guard
//! lives, so the types are arranged for that to follow from their shape rather than from care:
//! - the lock word of a [`Value`] or an [`Array`] lives in the same shared memory as its elements, so
//!   every handle on that memory (a clone, a copy received in another process) takes the same lock,
//!   and their only accessors (the guard, `get`, `set`, the bulk copies) take it;
//! - a type without a lock ([`RawValue`], [`RawArray`]) gives no reference at all, only copies, and
//!   the lock-free integer operations belong to [`AtomicValue`], which has no guard. (With both on
//!   one type, `let r = &mut *v.lock()?; v.fetch_add(1); *r += 1;` compiled: an atomic write under a
//!   live `&mut`.)
//! - each kind lives in a memfd of its own name, checked when a handle is received, so a value's
//!   memory cannot come back as another type (a `SharedMemory`, an `Event`) whose safe operations
//!   would write it behind a guard's back.
//!
//! Copies (of every type here) are relaxed atomic copies: racing another process's writes they may
//! mix old and new bytes, never anything worse.

use crate::codec;
use crate::sync::futex::Wait;
use crate::sync::lock::{LockTimeoutError, TryLockResult, map_guard, timed, tried};
use crate::sync::{Lock, LockGuard, LockResult, OwnerDied};
use crate::sys::shm::Region;
use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const VALUE: &str = "multiprocess-value";
const ARRAY: &str = "multiprocess-array";
const RAW_VALUE: &str = "multiprocess-raw-value";
const RAW_ARRAY: &str = "multiprocess-raw-array";
const ATOMIC_VALUE: &str = "multiprocess-atomic-value";

/// `len` elements of `T` at byte `offset` of a region: the storage behind every type here.
struct Cells<T> {
    region: Arc<Region>,
    offset: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            region: self.region.clone(),
            offset: self.offset,
            len: self.len,
            _t: PhantomData,
        }
    }
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "array too large")
}

fn wrong_len(what: &str, got: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{got} {what} for an array of {len}"),
    )
}

impl<T: Pod> Cells<T> {
    /// New zeroed storage for `len` elements at `offset` in a memfd of kind `kind`.
    fn create(kind: &str, offset: usize, len: usize) -> io::Result<Cells<T>> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(too_large)?;
        Ok(Cells {
            region: Arc::new(Region::anonymous(kind, bytes)?),
            offset,
            len,
            _t: PhantomData,
        })
    }

    /// Storage in a received region, checked to hold `len` elements at `offset`.
    fn received(region: Region, offset: usize, len: usize, what: &str) -> Result<Cells<T>, String> {
        let fits = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .is_some_and(|end| end <= region.len());
        if !fits {
            return Err(format!(
                "a received {what}'s shared memory is smaller than its type and length"
            ));
        }
        Ok(Cells {
            region: Arc::new(region),
            offset,
            len,
            _t: PhantomData,
        })
    }

    fn at(&self, i: usize) -> usize {
        self.offset + i * size_of::<T>()
    }

    /// Element `i` (`i < len`).
    fn read(&self, i: usize) -> T {
        let mut v = T::zeroed();
        // In bounds by construction; a region that was truncated under us reads as zeros.
        let _ = self
            .region
            .read_at(self.at(i), bytemuck::bytes_of_mut(&mut v));
        v
    }

    fn write(&self, i: usize, v: T) {
        let _ = self.region.write_at(self.at(i), bytemuck::bytes_of(&v));
    }

    fn read_all(&self, out: &mut [T]) -> io::Result<()> {
        if out.len() != self.len {
            return Err(wrong_len("slots", out.len(), self.len));
        }
        self.region
            .read_at(self.offset, bytemuck::cast_slice_mut(out))
    }

    fn write_all(&self, items: &[T]) -> io::Result<()> {
        if items.len() != self.len {
            return Err(wrong_len("items", items.len(), self.len));
        }
        self.region
            .write_at(self.offset, bytemuck::cast_slice(items))
    }

    fn index(&self, i: usize) -> io::Result<usize> {
        if i < self.len {
            Ok(i)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("index {i} out of {}", self.len),
            ))
        }
    }
}

/// Where a locked type keeps its elements: after the lock word, a cache line away from it (so that
/// waiters polling the lock do not slow the holder's writes), and aligned for `T`. (Mappings are
/// page-aligned, so a type aligned to more than a page cannot be placed: a compile-time error.)
fn data_offset<T>() -> usize {
    const {
        assert!(
            align_of::<T>() <= 4096,
            "shared values are aligned to at most 4096 bytes"
        )
    };
    align_of::<T>().max(64)
}

/// A `T` in shared memory with its lock, like Python's `multiprocessing.Value('d', 0.0)`.
///
/// `T` is any [`bytemuck::Pod`] type: integers, floats, arrays of them, and `#[repr(C)]` structs
/// deriving `Pod` ([`Pod`](crate::Pod) is re-exported; for a flag use `u8` or an integer).
/// [`lock`](Value::lock) gives a guard that dereferences to `&mut T`; [`get`](Value::get) and
/// [`set`](Value::set) take the lock for one copy. The lock lives in the value's own shared memory,
/// so every copy of the value, in every process, takes the same lock; and the lock is not handed out
/// (Python's `get_lock()`): releasing it under a live guard would let a second guard alias the
/// first. For a value without a lock see [`RawValue`]; for lock-free integers, [`AtomicValue`];
/// for several values under one lock, [`RawValue`]s and a [`Lock`].
///
/// If a process dies while holding the value's lock, the next `lock` returns
/// [`OwnerDied`](crate::OwnerDied) with the guard inside, so the value can be checked and repaired.
///
/// # Examples
/// ```
/// use multiprocess::{Process, Value};
///
/// fn f(args: (Value<f64>, i64)) {
///     let (num, name) = args;
///     num.set((name * name) as f64);
/// }
///
/// let num = Value::new(0.0f64)?;
/// Process::spawn(f, (num.clone(), 9))?.join()?;
/// assert_eq!(num.get(), 81.0);
/// *num.lock().unwrap() += 1.0; // Err only if a holder died; it holds the guard too
/// assert_eq!(num.get(), 82.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A struct, with the derives re-exported by this crate (`bytemuck`'s):
/// ```
/// #[derive(Clone, Copy, multiprocess::Pod, multiprocess::Zeroable)]
/// #[bytemuck(crate = "multiprocess::bytemuck")]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// let p = multiprocess::Value::new(Point { x: 1.0, y: 2.0 })?;
/// p.lock().unwrap().x += 1.0;
/// assert_eq!(p.get().x, 2.0);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// The guard is the only way to a reference, and a lock-free operation on the same memory does not
/// exist, so this does not compile:
/// ```compile_fail,E0599
/// let v = multiprocess::Value::new(0u64)?;
/// let r = &mut *v.lock().unwrap();
/// v.fetch_add(1); // no such method: atomics are AtomicValue's
/// *r += 1;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Nor can the lock be reached to release it under a live guard (and take a second one):
/// ```compile_fail,E0599
/// let v = multiprocess::Value::new(0u64)?;
/// let first = v.lock().unwrap();
/// v.get_lock().release()?; // no such method
/// let second = v.lock().unwrap();
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// A type aligned to more than a page cannot be placed in a page-aligned mapping with its lock:
/// ```compile_fail
/// #[derive(Clone, Copy, multiprocess::Pod, multiprocess::Zeroable)]
/// #[bytemuck(crate = "multiprocess::bytemuck")]
/// #[repr(C, align(8192))]
/// struct Huge([u8; 8192]);
/// let v = multiprocess::Value::new(Huge([0; 8192]))?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Value<T: Pod> {
    cells: Cells<T>,
    lock: Lock,
}

/// Holds a [`Value`]'s lock; dereferences to the value.
#[must_use = "if unused the Value's lock will immediately unlock"]
pub struct ValueGuard<'a, T: Pod> {
    value: &'a Value<T>,
    _held: LockGuard<'a>,
}

impl<'a, T: Pod> ValueGuard<'a, T> {
    pub(crate) fn region(&self) -> &'a Region {
        &self.value.cells.region
    }
    pub(crate) fn offset(&self) -> usize {
        self.value.cells.offset
    }
}

/// Acquires `lock` within `wait` (as this process) and wraps its guard, keeping an `OwnerDied`
/// outcome; `None` if it stayed held.
fn acquire<'a, G>(
    lock: &'a Lock,
    wait: Wait,
    f: impl FnOnce(LockGuard<'a>) -> G,
) -> Option<LockResult<G>> {
    map_guard(lock.acquire(crate::sys::getpid() as u32, wait), f)
}

/// Holds `lock` for one copy in or out; a dead holder's partial update is taken as it is.
fn hold(lock: &Lock) -> LockGuard<'_> {
    lock.lock().unwrap_or_else(OwnerDied::into_inner)
}

impl<T: Pod> Value<T> {
    /// A value holding `value`, with its lock.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    pub fn new(value: T) -> io::Result<Value<T>> {
        let cells = Cells::create(VALUE, data_offset::<T>(), 1)?;
        cells.write(0, value);
        Ok(Value {
            lock: Lock::in_region(cells.region.clone()),
            cells,
        })
    }

    /// Locks the value, waiting as long as it takes.
    ///
    /// # Errors
    /// [`OwnerDied`] (with the guard inside) if the previous holder died holding the lock.
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        acquire(&self.lock, Wait::Forever, |g| self.guard(g)).expect("no deadline")
    }

    /// Locks the value if the lock is free right now.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{TryLockError, Value};
    /// let v = Value::new(1u8)?;
    /// let held = v.lock().unwrap();
    /// assert!(matches!(v.try_lock(), Err(TryLockError::WouldBlock)));
    /// drop(held);
    /// assert_eq!(*v.try_lock().unwrap(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<ValueGuard<'_, T>> {
        tried(acquire(&self.lock, Wait::Never, |g| self.guard(g)))
    }

    /// Locks the value, waiting at most `timeout`; [`LockTimeoutError::Timeout`] if it stayed
    /// locked.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiprocess::LockTimeoutError;
    /// let v = multiprocess::Value::new(1u8)?;
    /// let held = v.lock().unwrap();
    /// assert!(matches!(v.lock_timeout(Duration::from_millis(10)), Err(LockTimeoutError::Timeout)));
    /// drop(held);
    /// assert_eq!(*v.lock_timeout(Duration::from_millis(10)).unwrap(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ValueGuard<'_, T>, LockTimeoutError<ValueGuard<'_, T>>> {
        timed(acquire(&self.lock, Wait::timeout(timeout), |g| {
            self.guard(g)
        }))
    }

    fn guard<'a>(&'a self, held: LockGuard<'a>) -> ValueGuard<'a, T> {
        ValueGuard {
            value: self,
            _held: held,
        }
    }

    /// Reads the value under its lock (a dead holder's partial update is read as it is).
    pub fn get(&self) -> T {
        let _g = hold(&self.lock);
        self.cells.read(0)
    }

    /// Writes the value under its lock.
    pub fn set(&self, value: T) {
        let _g = hold(&self.lock);
        self.cells.write(0, value);
    }
}

/// A `[T; len]` in shared memory with its lock, like Python's `multiprocessing.Array('i', range(10))`.
///
/// As [`Value`]: [`lock`](Array::lock) gives a guard that dereferences to `&mut [T]`, and every other
/// accessor takes the lock for one copy. [`copy_from_slice`](Array::copy_from_slice) and
/// [`to_vec`](Array::to_vec) copy in and out at memory speed. Without a lock: [`RawArray`].
///
/// # Examples
/// ```
/// use multiprocess::{Array, Process};
///
/// fn negate(arr: Array<i32>) {
///     let mut a = arr.lock().unwrap();
///     for (i, x) in a.iter_mut().enumerate() {
///         *x = -(i as i32);
///     }
/// }
///
/// let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
/// Process::spawn(negate, arr.clone())?.join()?;
/// assert_eq!(arr.to_vec(), [0, -1, -2, -3, -4, -5, -6, -7, -8, -9]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T: Pod> {
    cells: Cells<T>,
    lock: Lock,
}

/// Holds an [`Array`]'s lock; dereferences to the elements.
#[must_use = "if unused the Array's lock will immediately unlock"]
pub struct ArrayGuard<'a, T: Pod> {
    array: &'a Array<T>,
    _held: LockGuard<'a>,
}

impl<'a, T: Pod> ArrayGuard<'a, T> {
    pub(crate) fn region(&self) -> &'a Region {
        &self.array.cells.region
    }
    pub(crate) fn offset(&self) -> usize {
        self.array.cells.offset
    }
    pub(crate) fn len(&self) -> usize {
        self.array.cells.len
    }
}

impl<T: Pod> Array<T> {
    /// An array of `len` zeroed elements, with its lock.
    ///
    /// # Errors
    /// `InvalidInput` if it would not fit in memory; otherwise the shared memory could not be created.
    pub fn new(len: usize) -> io::Result<Array<T>> {
        let cells = Cells::create(ARRAY, data_offset::<T>(), len)?;
        Ok(Array {
            lock: Lock::in_region(cells.region.clone()),
            cells,
        })
    }

    /// An array holding a copy of `items`, with its lock.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_slice(items: &[T]) -> io::Result<Array<T>> {
        let a = Array::new(items.len())?;
        a.cells.write_all(items)?;
        Ok(a)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Locks the array, waiting as long as it takes.
    ///
    /// # Errors
    /// [`OwnerDied`] (with the guard inside) if the previous holder died holding the lock.
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        acquire(&self.lock, Wait::Forever, |g| self.guard(g)).expect("no deadline")
    }

    /// Locks the array if the lock is free right now.
    pub fn try_lock(&self) -> TryLockResult<ArrayGuard<'_, T>> {
        tried(acquire(&self.lock, Wait::Never, |g| self.guard(g)))
    }

    /// Locks the array, waiting at most `timeout`; [`LockTimeoutError::Timeout`] if it stayed
    /// locked.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ArrayGuard<'_, T>, LockTimeoutError<ArrayGuard<'_, T>>> {
        timed(acquire(&self.lock, Wait::timeout(timeout), |g| {
            self.guard(g)
        }))
    }

    fn guard<'a>(&'a self, held: LockGuard<'a>) -> ArrayGuard<'a, T> {
        ArrayGuard {
            array: self,
            _held: held,
        }
    }

    /// Element `i` (under the lock); `None` out of bounds.
    pub fn get(&self, i: usize) -> Option<T> {
        let i = self.cells.index(i).ok()?;
        let _g = hold(&self.lock);
        Some(self.cells.read(i))
    }

    /// Sets element `i` (under the lock).
    ///
    /// # Errors
    /// `InvalidInput` when `i` is out of bounds.
    pub fn set(&self, i: usize, value: T) -> io::Result<()> {
        let i = self.cells.index(i)?;
        let _g = hold(&self.lock);
        self.cells.write(i, value);
        Ok(())
    }

    /// Copies `items` (exactly `len` of them) in, under the lock: one bulk copy.
    ///
    /// # Errors
    /// `InvalidInput` when the lengths differ.
    pub fn copy_from_slice(&self, items: &[T]) -> io::Result<()> {
        let _g = hold(&self.lock);
        self.cells.write_all(items)
    }

    /// Copies the elements into `out` (exactly `len` of them), under the lock: one bulk copy.
    ///
    /// # Errors
    /// `InvalidInput` when the lengths differ.
    pub fn copy_to_slice(&self, out: &mut [T]) -> io::Result<()> {
        let _g = hold(&self.lock);
        self.cells.read_all(out)
    }

    /// The elements, copied out under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.len()];
        let _ = self.copy_to_slice(&mut out); // same length
        out
    }
}

/// A `T` in shared memory without a lock, like Python's `multiprocessing.RawValue`.
///
/// There is no guard and no reference into the memory: [`get`](Self::get) and [`set`](Self::set)
/// copy, and a copy racing another process's `set` may mix old and new bytes (never anything
/// worse). Coordinate with a [`Lock`] of your own when that matters (Python's `Value(..., lock=lock)`
/// idiom: one lock for several values), or use [`Value`] (its own lock) or [`AtomicValue`].
///
/// # Examples
/// ```
/// use multiprocess::{Lock, Process, RawValue};
///
/// fn swap_pair(args: (Lock, RawValue<i32>, RawValue<i32>)) {
///     let (lock, a, b) = args;
///     let _both = lock.lock().unwrap(); // one lock for the pair
///     let (x, y) = (a.get(), b.get());
///     a.set(y);
///     b.set(x);
/// }
///
/// let (lock, a, b) = (Lock::new()?, RawValue::new(1)?, RawValue::new(2)?);
/// Process::spawn(swap_pair, (lock.clone(), a.clone(), b.clone()))?.join()?;
/// assert_eq!((a.get(), b.get()), (2, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawValue<T: Pod> {
    cells: Cells<T>,
}

impl<T: Pod> RawValue<T> {
    /// A raw value holding `value`.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    pub fn new(value: T) -> io::Result<RawValue<T>> {
        let cells = Cells::create(RAW_VALUE, 0, 1)?;
        cells.write(0, value);
        Ok(RawValue { cells })
    }

    /// Copies the value out.
    pub fn get(&self) -> T {
        self.cells.read(0)
    }

    /// Copies `value` in.
    pub fn set(&self, value: T) {
        self.cells.write(0, value);
    }
}

/// A `[T; len]` in shared memory without a lock, like Python's `multiprocessing.RawArray`: copies in
/// and out only, as [`RawValue`].
///
/// # Examples
/// ```
/// use multiprocess::{Process, RawArray};
///
/// fn fill(a: RawArray<u64>) {
///     a.copy_from_slice(&[7; 1000]).unwrap();
/// }
///
/// let a = RawArray::new(1000)?;
/// Process::spawn(fill, a.clone())?.join()?;
/// assert!(a.to_vec().iter().all(|&x| x == 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawArray<T: Pod> {
    cells: Cells<T>,
}

impl<T: Pod> RawArray<T> {
    /// A raw array of `len` zeroed elements.
    ///
    /// # Errors
    /// `InvalidInput` if it would not fit in memory; otherwise the shared memory could not be created.
    pub fn new(len: usize) -> io::Result<RawArray<T>> {
        Ok(RawArray {
            cells: Cells::create(RAW_ARRAY, 0, len)?,
        })
    }

    /// A raw array holding a copy of `items`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_slice(items: &[T]) -> io::Result<RawArray<T>> {
        let a = RawArray::new(items.len())?;
        a.cells.write_all(items)?;
        Ok(a)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Element `i`; `None` out of bounds.
    pub fn get(&self, i: usize) -> Option<T> {
        Some(self.cells.read(self.cells.index(i).ok()?))
    }

    /// Sets element `i`.
    ///
    /// # Errors
    /// `InvalidInput` when `i` is out of bounds.
    pub fn set(&self, i: usize, value: T) -> io::Result<()> {
        self.cells.write(self.cells.index(i)?, value);
        Ok(())
    }

    /// Copies `items` (exactly `len` of them) in: one bulk copy.
    ///
    /// # Errors
    /// `InvalidInput` when the lengths differ.
    pub fn copy_from_slice(&self, items: &[T]) -> io::Result<()> {
        self.cells.write_all(items)
    }

    /// Copies the elements into `out` (exactly `len` of them): one bulk copy.
    ///
    /// # Errors
    /// `InvalidInput` when the lengths differ.
    pub fn copy_to_slice(&self, out: &mut [T]) -> io::Result<()> {
        self.cells.read_all(out)
    }

    /// The elements, copied out.
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.len()];
        let _ = self.cells.read_all(&mut out); // same length
        out
    }
}

/// Integer types that an [`AtomicValue`] can hold: `i32`, `u32`, `i64`, `u64`, `isize`, `usize`.
pub trait AtomicInt: Pod + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

/// An integer in shared memory with lock-free atomic operations (sequentially consistent), for
/// counters and flags that many processes update at once.
///
/// # Examples
/// ```
/// use multiprocess::{AtomicValue, Process};
///
/// fn count(hits: AtomicValue<u64>) {
///     for _ in 0..1000 {
///         hits.fetch_add(1);
///     }
/// }
///
/// let hits = AtomicValue::new(0u64)?;
/// let kids: Vec<_> = (0..3)
///     .map(|_| Process::spawn(count, hits.clone()))
///     .collect::<Result<_, _>>()?;
/// for k in kids {
///     k.join()?;
/// }
/// assert_eq!(hits.load(), 3000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AtomicValue<T: AtomicInt> {
    region: Arc<Region>,
    _t: PhantomData<T>,
}

impl<T: AtomicInt> AtomicValue<T> {
    /// An atomic integer holding `value`.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    pub fn new(value: T) -> io::Result<AtomicValue<T>> {
        let region = Region::anonymous(ATOMIC_VALUE, size_of::<T>())?;
        region.write_at(0, bytemuck::bytes_of(&value))?;
        Ok(AtomicValue {
            region: Arc::new(region),
            _t: PhantomData,
        })
    }
}

macro_rules! atomic_int {
    ($($t:ty => $a:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl AtomicInt for $t {}
        impl AtomicValue<$t> {
            fn atomic(&self) -> &$a {
                self.region.atomic::<$a>(0)
            }
            /// Reads the value.
            pub fn load(&self) -> $t {
                self.atomic().load(Ordering::SeqCst)
            }
            /// Writes the value.
            pub fn store(&self, v: $t) {
                self.atomic().store(v, Ordering::SeqCst)
            }
            /// Writes `v`; returns the previous value.
            pub fn swap(&self, v: $t) -> $t {
                self.atomic().swap(v, Ordering::SeqCst)
            }
            /// Adds `v` (wrapping); returns the previous value.
            pub fn fetch_add(&self, v: $t) -> $t {
                self.atomic().fetch_add(v, Ordering::SeqCst)
            }
            /// Subtracts `v` (wrapping); returns the previous value.
            pub fn fetch_sub(&self, v: $t) -> $t {
                self.atomic().fetch_sub(v, Ordering::SeqCst)
            }
            /// Stores the larger of the value and `v`; returns the previous value.
            pub fn fetch_max(&self, v: $t) -> $t {
                self.atomic().fetch_max(v, Ordering::SeqCst)
            }
            /// Replaces `current` by `new` if the value is `current`; returns the previous value,
            /// `Err` with it when it was not `current`.
            pub fn compare_exchange(&self, current: $t, new: $t) -> Result<$t, $t> {
                self.atomic().compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            }
        }
    )*};
}

atomic_int!(
    i32 => std::sync::atomic::AtomicI32,
    u32 => std::sync::atomic::AtomicU32,
    i64 => std::sync::atomic::AtomicI64,
    u64 => std::sync::atomic::AtomicU64,
    isize => std::sync::atomic::AtomicIsize,
    usize => std::sync::atomic::AtomicUsize,
);

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cells: self.cells.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            cells: self.cells.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Pod> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            cells: self.cells.clone(),
        }
    }
}

impl<T: Pod> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            cells: self.cells.clone(),
        }
    }
}

impl<T: AtomicInt> Clone for AtomicValue<T> {
    fn clone(&self) -> Self {
        AtomicValue {
            region: self.region.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("len", &self.len())
            .field("lock", &self.lock)
            .finish()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawValue").field(&self.get()).finish()
    }
}

impl<T: Pod> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArray")
            .field("len", &self.len())
            .finish()
    }
}

impl<T: AtomicInt + fmt::Debug> fmt::Debug for AtomicValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = T::zeroed();
        let _ = self.region.read_at(0, bytemuck::bytes_of_mut(&mut v));
        f.debug_tuple("AtomicValue").field(&v).finish()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

// ---- Travelling: as the region's descriptor (beside the message), and the length for arrays. ----

impl<T: Pod> Cells<T> {
    /// Receives storage of kind `kind` with `len` elements at `offset`.
    fn receive<E: serde::de::Error>(
        fd: codec::ReceivedFd,
        kind: &str,
        offset: usize,
        len: u64,
        what: &str,
    ) -> Result<Cells<T>, E> {
        let region = Region::receive(fd.0, kind, false).map_err(E::custom)?;
        let len = usize::try_from(len).map_err(E::custom)?;
        Cells::received(region, offset, len, what).map_err(E::custom)
    }

    fn fd(&self, what: &'static str) -> codec::FdRef<'_> {
        codec::FdRef(self.region.as_fd(), what)
    }
}

/// Travels as the descriptor of its shared memory (beside the message); the receiver checks that the
/// memory is a `Value`'s and large enough for `T`.
impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.cells.fd("Value").serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = codec::ReceivedFd::deserialize(d)?;
        let cells = Cells::receive(fd, VALUE, data_offset::<T>(), 1, "Value")?;
        Ok(Value {
            lock: Lock::in_region(cells.region.clone()),
            cells,
        })
    }
}

/// Travels as the descriptor of its shared memory and its length.
impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.cells.fd("Array"), self.len() as u64).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (fd, len) = <(codec::ReceivedFd, u64)>::deserialize(d)?;
        let cells = Cells::receive(fd, ARRAY, data_offset::<T>(), len, "Array")?;
        Ok(Array {
            lock: Lock::in_region(cells.region.clone()),
            cells,
        })
    }
}

/// Travels as the descriptor of its shared memory.
impl<T: Pod> Serialize for RawValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.cells.fd("RawValue").serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = codec::ReceivedFd::deserialize(d)?;
        let cells = Cells::receive(fd, RAW_VALUE, 0, 1, "RawValue")?;
        Ok(RawValue { cells })
    }
}

/// Travels as the descriptor of its shared memory and its length.
impl<T: Pod> Serialize for RawArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.cells.fd("RawArray"), self.len() as u64).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (fd, len) = <(codec::ReceivedFd, u64)>::deserialize(d)?;
        let cells = Cells::receive(fd, RAW_ARRAY, 0, len, "RawArray")?;
        Ok(RawArray { cells })
    }
}

/// Travels as the descriptor of its shared memory.
impl<T: AtomicInt> Serialize for AtomicValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::FdRef(self.region.as_fd(), "AtomicValue").serialize(s)
    }
}

impl<'de, T: AtomicInt> Deserialize<'de> for AtomicValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let region = codec::deserialize_region(d, size_of::<T>(), ATOMIC_VALUE, "AtomicValue")?;
        Ok(AtomicValue {
            region: Arc::new(region),
            _t: PhantomData,
        })
    }
}
