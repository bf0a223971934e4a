//! `Value<T>` and `Array<T>`: plain-old-data in shared memory, with a lock by default.

use crate::codec;
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

/// A `T` in shared memory, like Python's `multiprocessing.Value('d', 0.0)`.
///
/// `T` is any [`bytemuck::Pod`] type: integers, floats, arrays of them, and `#[repr(C)]` structs
/// deriving `Pod` (every bit pattern valid, no padding; for a flag use `u8` or an integer).
///
/// - [`Value::new`] comes with a [`Lock`], like Python's default: [`lock`](Value::lock) gives a guard
///   that dereferences to `&mut T`, and [`get`](Value::get)/[`set`](Value::set) take the lock.
/// - [`Value::new_raw`] has no lock (Python's `RawValue`): [`get`](Value::get)/[`set`](Value::set)
///   copy without locking, and a copy racing a write may mix old and new bytes; `lock` returns `None`.
/// - Integer values also offer atomic [`load`](Value::load), [`store`](Value::store),
///   [`fetch_add`](Value::fetch_add) and [`compare_exchange`](Value::compare_exchange), lock-free,
///   in either form.
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
/// *num.lock().unwrap().unwrap() += 1.0;
/// assert_eq!(num.get(), 82.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T: Pod> {
    pub(crate) region: Arc<Region>,
    lock: Option<Lock>,
    _t: PhantomData<T>,
}

/// Holds a [`Value`]'s lock; dereferences to the value.
#[must_use = "if unused the Value's lock will immediately unlock"]
pub struct ValueGuard<'a, T: Pod> {
    pub(crate) value: &'a Value<T>,
    _lock: LockGuard<'a>,
}

/// A `[T; len]` in shared memory, like Python's `multiprocessing.Array('i', range(10))`.
///
/// Same forms as [`Value`]: with a lock ([`Array::new`], [`Array::lock`] gives a guard that
/// dereferences to `&mut [T]`) or raw ([`Array::new_raw`]). [`copy_from_slice`](Array::copy_from_slice)
/// and [`to_vec`](Array::to_vec) copy in and out at memory speed.
///
/// # Examples
/// ```
/// use multiprocess::{Array, Process};
///
/// fn negate(arr: Array<i32>) {
///     let mut a = arr.lock().unwrap().unwrap();
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
    pub(crate) region: Arc<Region>,
    pub(crate) len: usize,
    lock: Option<Lock>,
    _t: PhantomData<T>,
}

/// Holds an [`Array`]'s lock; dereferences to the elements.
#[must_use = "if unused the Array's lock will immediately unlock"]
pub struct ArrayGuard<'a, T: Pod> {
    pub(crate) array: &'a Array<T>,
    _lock: LockGuard<'a>,
}

/// Holds `lock` (if any) for a copy in or out; a dead holder's partial update is taken as it is.
fn hold(lock: &Option<Lock>) -> Option<LockGuard<'_>> {
    lock.as_ref()
        .map(|l| l.lock().unwrap_or_else(OwnerDied::into_inner))
}

/// Locks `lock` (if any) and wraps its guard, keeping an `OwnerDied` outcome.
fn lock_into<'a, G>(
    lock: &'a Option<Lock>,
    wrap: impl FnOnce(LockGuard<'a>) -> G,
) -> Option<LockResult<G>> {
    Some(match lock.as_ref()?.lock() {
        Ok(g) => Ok(wrap(g)),
        Err(died) => Err(OwnerDied::new(wrap(died.into_inner()))),
    })
}

fn region_for(bytes: usize) -> io::Result<Region> {
    Region::anonymous("multiprocess-value", bytes)
}

impl<T: Pod> Value<T> {
    /// A value with its own lock.
    pub fn new(value: T) -> io::Result<Value<T>> {
        Value::make(value, Some(Lock::new()?))
    }

    /// A value without a lock (Python's `RawValue`).
    pub fn new_raw(value: T) -> io::Result<Value<T>> {
        Value::make(value, None)
    }

    /// A value guarded by an existing lock (Python's `Value(..., lock=lock)`), for several values
    /// under one lock.
    pub fn with_lock(value: T, lock: Lock) -> io::Result<Value<T>> {
        Value::make(value, Some(lock))
    }

    fn make(value: T, lock: Option<Lock>) -> io::Result<Value<T>> {
        let region = region_for(size_of::<T>())?;
        region.write_at(0, bytemuck::bytes_of(&value))?;
        Ok(Value {
            region: Arc::new(region),
            lock,
            _t: PhantomData,
        })
    }

    /// The lock, if the value has one.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }

    /// Locks the value; `None` for a raw value.
    pub fn lock(&self) -> Option<LockResult<ValueGuard<'_, T>>> {
        lock_into(&self.lock, |g| ValueGuard {
            value: self,
            _lock: g,
        })
    }

    /// Reads the value (under its lock, if it has one; a dead holder's partial update is read as is).
    pub fn get(&self) -> T {
        let _g = hold(&self.lock);
        let mut v = T::zeroed();
        let _ = self.region.read_at(0, bytemuck::bytes_of_mut(&mut v));
        v
    }

    /// Writes the value (under its lock, if it has one).
    pub fn set(&self, value: T) {
        let _g = hold(&self.lock);
        let _ = self.region.write_at(0, bytemuck::bytes_of(&value));
    }
}

impl<T: Pod> Array<T> {
    /// An array of `len` zeroed elements with its own lock.
    pub fn new(len: usize) -> io::Result<Array<T>> {
        Array::make(len, Some(Lock::new()?))
    }

    /// An array without a lock (Python's `RawArray`).
    pub fn new_raw(len: usize) -> io::Result<Array<T>> {
        Array::make(len, None)
    }

    /// An array (with its own lock) holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> io::Result<Array<T>> {
        let a = Array::new(items.len())?;
        a.copy_from_slice(items)?;
        Ok(a)
    }

    fn make(len: usize, lock: Option<Lock>) -> io::Result<Array<T>> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "array too large"))?;
        Ok(Array {
            region: Arc::new(region_for(bytes)?),
            len,
            lock,
            _t: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lock, if the array has one.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }

    /// Locks the array; `None` for a raw array.
    pub fn lock(&self) -> Option<LockResult<ArrayGuard<'_, T>>> {
        lock_into(&self.lock, |g| ArrayGuard {
            array: self,
            _lock: g,
        })
    }

    /// Element `i` (under the lock, if any); `None` out of bounds.
    pub fn get(&self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let _g = hold(&self.lock);
        let mut v = T::zeroed();
        self.region
            .read_at(i * size_of::<T>(), bytemuck::bytes_of_mut(&mut v))
            .ok()?;
        Some(v)
    }

    /// Sets element `i` (under the lock, if any).
    ///
    /// # Errors
    /// `InvalidInput` when `i` is out of bounds.
    pub fn set(&self, i: usize, value: T) -> io::Result<()> {
        if i >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("index {i} out of {}", self.len),
            ));
        }
        let _g = hold(&self.lock);
        self.region
            .write_at(i * size_of::<T>(), bytemuck::bytes_of(&value))
    }

    /// Copies `items` (exactly `len` of them) in, under the lock if any: one `memcpy`.
    ///
    /// # Errors
    /// `InvalidInput` when the lengths differ.
    pub fn copy_from_slice(&self, items: &[T]) -> io::Result<()> {
        if items.len() != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} items for an array of {}", items.len(), self.len),
            ));
        }
        let _g = hold(&self.lock);
        self.region.write_at(0, bytemuck::cast_slice(items))
    }

    /// Copies the elements out, under the lock if any: one `memcpy`.
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.len];
        self.copy_to_slice(&mut out).expect("same length");
        out
    }

    /// Copies the elements into `out` (exactly `len` of them), under the lock if any.
    ///
    /// # Errors
    /// `InvalidInput` when the lengths differ.
    pub fn copy_to_slice(&self, out: &mut [T]) -> io::Result<()> {
        if out.len() != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} slots for an array of {}", out.len(), self.len),
            ));
        }
        let _g = hold(&self.lock);
        self.region.read_at(0, bytemuck::cast_slice_mut(out))
    }
}

/// Integer types whose [`Value`] offers lock-free atomic operations.
pub trait AtomicInt: Pod + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! atomic_int {
    ($($t:ty => $a:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl AtomicInt for $t {}
        impl Value<$t> {
            fn atomic(&self) -> &$a {
                self.region.atomic::<$a>(0)
            }
            /// Reads the value atomically, without the lock.
            pub fn load(&self) -> $t {
                self.atomic().load(Ordering::SeqCst)
            }
            /// Writes the value atomically, without the lock.
            pub fn store(&self, v: $t) {
                self.atomic().store(v, Ordering::SeqCst)
            }
            /// Adds atomically (wrapping), without the lock; returns the previous value.
            pub fn fetch_add(&self, v: $t) -> $t {
                self.atomic().fetch_add(v, Ordering::SeqCst)
            }
            /// Replaces `current` by `new` atomically if the value is `current`; returns the previous
            /// value, `Err` with it when it was not `current`.
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
            region: self.region.clone(),
            lock: self.lock.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            region: self.region.clone(),
            len: self.len,
            lock: self.lock.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("locked", &self.lock.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("len", &self.len)
            .field("locked", &self.lock.is_some())
            .finish()
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

struct RegionFd<'a>(&'a Region);

impl Serialize for RegionFd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::serialize_fd(self.0.as_fd(), "Value or Array", s)
    }
}

struct RegionIn(Region);

impl<'de> Deserialize<'de> for RegionIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        codec::deserialize_region(d, 0, "Value or Array").map(RegionIn)
    }
}

/// Travels as its shared memory's descriptor (and its lock's), beside the message.
impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (RegionFd(&self.region), &self.lock).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (RegionIn(region), lock) = <(RegionIn, Option<Lock>)>::deserialize(d)?;
        if region.len() < size_of::<T>() {
            return Err(serde::de::Error::custom(
                "a Value's shared memory is smaller than its type",
            ));
        }
        Ok(Value {
            region: Arc::new(region),
            lock,
            _t: PhantomData,
        })
    }
}

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (RegionFd(&self.region), self.len as u64, &self.lock).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (RegionIn(region), len, lock) = <(RegionIn, u64, Option<Lock>)>::deserialize(d)?;
        let len = usize::try_from(len).map_err(serde::de::Error::custom)?;
        if len
            .checked_mul(size_of::<T>())
            .is_none_or(|b| b > region.len())
        {
            return Err(serde::de::Error::custom(
                "an Array's shared memory is smaller than its length",
            ));
        }
        Ok(Array {
            region: Arc::new(region),
            len,
            lock,
            _t: PhantomData,
        })
    }
}
