//! `Value`, `Array`, `RawValue`, `RawArray` and `AtomicValue` across real processes, under every
//! start method.
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{
    Array, AtomicValue, Connection, ProcessError, RawArray, RawValue, StartMethod, Value, pipe,
};
use std::time::Duration;

fn seed_f(args: (Value<f64>, Array<i32>, i64)) {
    // The seed: n.value = name * name; for i in range(len(a)): a[i] = -i
    let (n, a, name) = args;
    std::thread::sleep(Duration::from_millis(10));
    n.set((name * name) as f64);
    for i in 0..a.len() {
        a.set(i, -(i as i32)).unwrap();
    }
}

#[test]
fn the_seed_value_and_array_example() {
    for m in StartMethod::ALL {
        let num = Value::new(0.0f64).unwrap();
        let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>()).unwrap();
        let kids: Vec<_> = (0..10)
            .map(|i| start(m, seed_f, (num.clone(), arr.clone(), i)))
            .collect();
        for k in kids {
            join(k).unwrap();
        }
        let v = num.get();
        assert!((0..10).any(|i| v == (i * i) as f64), "{m}: {v}");
        assert_eq!(
            arr.to_vec(),
            (0..10).map(|i: i32| -i).collect::<Vec<_>>(),
            "{m}"
        );
    }
}

fn add_locked(args: (Value<u64>, u32)) {
    let (v, n) = args;
    for _ in 0..n {
        *v.lock().unwrap() += 1;
    }
}

fn add_atomic(args: (AtomicValue<u64>, u32)) {
    let (v, n) = args;
    for _ in 0..n {
        v.fetch_add(1);
    }
}

#[test]
fn increments_under_the_lock_and_atomically() {
    for m in StartMethod::ALL {
        let v = Value::new(0u64).unwrap();
        let kids: Vec<_> = (0..3)
            .map(|_| start(m, add_locked, (v.clone(), 3000)))
            .collect();
        add_locked((v.clone(), 3000));
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(v.get(), 12_000, "{m}");

        let raw = AtomicValue::new(0u64).unwrap();
        let kids: Vec<_> = (0..3)
            .map(|_| start(m, add_atomic, (raw.clone(), 5000)))
            .collect();
        add_atomic((raw.clone(), 5000));
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(raw.load(), 20_000, "{m}");
        assert_eq!(raw.compare_exchange(20_000, 1), Ok(20_000));
        assert_eq!(raw.compare_exchange(20_000, 2), Err(1));
    }
}

fn hold_value_lock(args: (Value<i64>, Connection)) {
    let (v, conn) = args;
    let mut g = v.lock().unwrap();
    *g = -1; // half-way through an update
    conn.send(&()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_dead_holder_of_a_values_lock_is_reported() {
    for m in StartMethod::ALL {
        let v = Value::new(5i64).unwrap();
        let (here, there) = pipe().unwrap();
        let p = start(m, hold_value_lock, (v.clone(), there));
        here.recv_timeout::<()>(common::DEADLINE).unwrap();
        p.kill().unwrap();
        assert!(matches!(join(p), Err(ProcessError::Signaled { signal: 9 })));
        match v.lock() {
            Err(died) => {
                let mut g = died.into_inner();
                assert_eq!(*g, -1, "{m}: the dead holder's partial update is visible");
                *g = 5; // repaired
            }
            Ok(_) => panic!("{m}: OwnerDied expected"),
        }
        assert_eq!(v.get(), 5);
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    bytemuck::Pod,
    bytemuck::Zeroable,
    serde::Serialize,
    serde::Deserialize,
)]
#[repr(C)]
struct Point {
    x: f64,
    y: f64,
    id: u32,
    pad: u32,
}

fn move_point(v: Value<Point>) -> Point {
    let mut g = v.lock().unwrap();
    g.x += 1.0;
    g.id = 7;
    *g
}

#[test]
fn repr_c_structs_and_bounds() {
    for m in StartMethod::ALL {
        let v = Value::new(Point {
            x: 1.0,
            y: 2.0,
            id: 0,
            pad: 0,
        })
        .unwrap();
        let seen = join(start(m, move_point, v.clone())).unwrap();
        assert_eq!(v.get(), seen);
        assert_eq!(
            seen,
            Point {
                x: 2.0,
                y: 2.0,
                id: 7,
                pad: 0
            }
        );
    }
    let a = Array::<u16>::new(4).unwrap();
    assert_eq!(a.get(4), None);
    assert!(a.set(4, 1).is_err());
    assert!(a.copy_from_slice(&[1, 2, 3]).is_err());
    assert_eq!(a.to_vec(), [0; 4]);
    let empty = RawArray::<u64>::new(0).unwrap();
    assert!(empty.is_empty() && empty.to_vec().is_empty());
}

#[test]
fn values_travel_through_connections() {
    let (a, b) = pipe().unwrap();
    let v = Value::new(1i32).unwrap();
    let arr = Array::from_slice(&[1u8, 2, 3]).unwrap();
    a.send(&(v.clone(), arr.clone())).unwrap();
    let (v2, arr2): (Value<i32>, Array<u8>) = b.recv().unwrap();
    v2.set(42);
    arr2.set(0, 9).unwrap();
    assert_eq!(v.get(), 42);
    assert_eq!(arr.to_vec(), [9, 2, 3]);
    // A receiver asking for a bigger type than the memory holds gets an error, not a wild read.
    a.send(&v).unwrap();
    assert!(b.recv::<Value<u64>>().is_err());
}

/// Creates one of every shared object, reports that it has, and waits to be killed.
fn create_everything_then_hang(conn: Connection) {
    let objects = (
        multiprocess::SharedMemory::new(1 << 20).unwrap(),
        Value::new(1u64).unwrap(),
        Array::<u8>::new(4096).unwrap(),
        multiprocess::Lock::new().unwrap(),
        multiprocess::RLock::new().unwrap(),
        multiprocess::Semaphore::new(1).unwrap(),
        multiprocess::Event::new().unwrap(),
        multiprocess::Condition::new().unwrap(),
        multiprocess::Barrier::new(2).unwrap(),
    );
    conn.send(&()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(objects);
}

fn dev_shm() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Anonymous objects are memfds: a creator killed while they live leaves no name in `/dev/shm` (and
/// the memory goes with the last descriptor). No test of this binary creates named regions, so any
/// new entry would be a leak.
#[test]
fn a_killed_creator_of_anonymous_objects_leaves_nothing_behind() {
    for m in StartMethod::ALL {
        let before = dev_shm();
        let (here, there) = pipe().unwrap();
        let kid = start(m, create_everything_then_hang, there);
        here.recv_timeout::<()>(common::DEADLINE).unwrap();
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", kid.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.contains("multiprocess"))
            .collect();
        assert!(
            fds.len() >= 9 && fds.iter().all(|p| p.starts_with("/memfd:")),
            "{m}: {fds:?}"
        );
        kid.kill().unwrap();
        assert!(matches!(join(kid), Err(ProcessError::Signaled { .. })));
        let new: Vec<_> = dev_shm().difference(&before).cloned().collect();
        assert!(new.is_empty(), "{m}: new in /dev/shm: {new:?}");
    }
}

fn raw_pair_swap(args: (multiprocess::Lock, RawValue<i64>, RawArray<u8>)) {
    let (lock, v, a) = args;
    let _both = lock.lock().unwrap();
    v.set(v.get() * 2);
    a.set(0, a.get(0).unwrap() + 1).unwrap();
}

#[test]
fn raw_values_and_arrays_copy_under_a_lock_of_their_own() {
    for m in StartMethod::ALL {
        let lock = multiprocess::Lock::new().unwrap();
        let (v, a) = (
            RawValue::new(3i64).unwrap(),
            RawArray::from_slice(&[1u8, 2]).unwrap(),
        );
        let kids: Vec<_> = (0..4)
            .map(|_| start(m, raw_pair_swap, (lock.clone(), v.clone(), a.clone())))
            .collect();
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(v.get(), 48, "{m}");
        assert_eq!(a.to_vec(), [5, 2], "{m}");
        assert_eq!(a.get(2), None);
        assert!(a.set(2, 0).is_err());
    }
}

#[test]
fn atomic_values_offer_every_operation() {
    let v = AtomicValue::new(10i32).unwrap();
    assert_eq!(v.swap(3), 10);
    assert_eq!(v.fetch_sub(5), 3);
    assert_eq!(v.fetch_max(7), -2);
    assert_eq!(v.load(), 7);
    v.store(i32::MAX);
    assert_eq!(v.fetch_add(1), i32::MAX);
    assert_eq!(v.load(), i32::MIN, "wrapping");
}

/// Sends `value` through a pipe and receives it as an `R`.
fn confuse<V: serde::Serialize, R: serde::de::DeserializeOwned>(
    value: &V,
) -> Result<R, multiprocess::RecvError> {
    let (a, b) = pipe().unwrap();
    a.send(value).unwrap();
    b.recv::<R>()
}

/// The memory behind a `Value`'s guard must not come back as another type whose safe operations
/// write it (through another mapping, behind the guard's back), nor the reverse. Each shared type
/// checks the kind of memory it receives.
#[test]
fn a_region_cannot_be_received_as_another_kind() {
    let v = Value::new(0u64).unwrap();
    assert!(confuse::<_, (Value<u64>,)>(&(v.clone(),)).is_ok());
    let e = confuse::<_, RawValue<u64>>(&v).unwrap_err();
    assert!(e.to_string().contains("multiprocess-value"), "{e}");
    assert!(confuse::<_, AtomicValue<u64>>(&v).is_err());
    assert!(confuse::<_, multiprocess::Event>(&v).is_err());
    assert!(confuse::<_, multiprocess::Lock>(&v).is_err());
    // A SharedMemory travels as (descriptor, name): forge that shape around a Value's descriptor.
    assert!(confuse::<_, multiprocess::SharedMemory>(&(v.clone(), None::<String>)).is_err());
    // And the other way round: bytes anyone may write are not a Value.
    let shm = multiprocess::SharedMemory::new(4096).unwrap();
    assert!(confuse::<_, (Value<u64>, Option<String>)>(&shm).is_err());
    let event = multiprocess::Event::new().unwrap();
    assert!(confuse::<_, Value<u32>>(&event).is_err());
    let raw = RawArray::<u64>::new(4).unwrap();
    assert!(confuse::<_, Array<u64>>(&raw).is_err());
    assert!(confuse::<_, RawArray<u64>>(&raw).is_ok());
}

#[test]
fn a_guard_of_a_clone_is_exclusive_with_every_handle() {
    let v = Value::new(1u32).unwrap();
    let (a, b) = pipe().unwrap();
    a.send(&v).unwrap();
    let received: Value<u32> = b.recv().unwrap(); // another mapping of the same memory
    let g = v.lock().unwrap();
    assert!(received.try_lock().is_err(), "the lock lives in the memory");
    assert!(v.clone().try_lock().is_err());
    drop(g);
    *received.lock().unwrap() = 9;
    assert_eq!(v.get(), 9);
}

/// A `Value`'s memory sent in a `Connection`'s wire shape (a descriptor, then two flags) is not a
/// connection: `send_bytes` on it would write the value's bytes (and its lock word) under a live
/// guard. (Found by review.)
#[test]
fn a_value_cannot_be_received_as_a_connection() {
    let v = Value::new(0u64).unwrap();
    let e = confuse::<_, Connection>(&(v.clone(), true, true)).unwrap_err();
    assert!(e.to_string().contains("neither a socket nor a pipe"), "{e}");
    let shm = multiprocess::SharedMemory::new(64).unwrap();
    assert!(confuse::<_, Connection>(&(shm, true, true)).is_err());
    // Real ones still travel.
    let (x, y) = pipe().unwrap();
    let y2: Connection = confuse::<_, Connection>(&y).unwrap();
    x.send(&7u8).unwrap();
    assert_eq!(y2.recv::<u8>().unwrap(), 7);
}
