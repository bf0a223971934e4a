//! `SharedMemory`: a byte region mapped by several processes.

use crate::codec;
use crate::sys::shm::{self, Region};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

/// A region of bytes shared between processes, for zero-copy bulk data.
///
/// - [`SharedMemory::new`] makes an *anonymous* region (a memfd): it has no name, cannot leak, and
///   vanishes when the last process holding it unmaps it, even if every one of them crashes. Hand it
///   to children in their argument or send it through a [`Connection`](crate::Connection).
/// - [`SharedMemory::create`] makes a *named* region (`/dev/shm/<name>`) that unrelated processes can
///   [`open`](SharedMemory::open). The process that created it owns the name and removes it when its
///   last handle is dropped ([`unlink`](SharedMemory::unlink) removes it earlier), and if it dies
///   first, however it dies, its fork server removes it (CPython's resource tracker, without the
///   warnings). Openers never remove a name, and nobody removes a name that was created again by
///   someone else in the meantime. [`SharedMemory::remove`] removes a name by hand.
///
/// Every process sees the same bytes. [`read`](Self::read) and [`write`](Self::write) copy in and
/// out safely: a copy racing with another process's write may mix old and new bytes, and is never
/// undefined behaviour (the copies are atomic byte by byte). For direct access under a protocol of
/// your own there are `unsafe` [`as_slice`](Self::as_slice) and [`as_mut_slice`](Self::as_mut_slice).
///
/// # What another process cannot do
/// No holder can crash another by shrinking the memory under its mapping: an anonymous region is
/// sealed against resizing as soon as it has its size (a received one that is not is refused), and
/// the mappings of a named region, which anyone who can open the name can truncate, are guarded:
/// after a truncation, `read` and `write` report `UnexpectedEof` where they would have raised
/// `SIGBUS`. (The guard is a `SIGBUS` handler; a program that installs its own handler over it loses
/// that protection for named regions.)
///
/// # Examples
/// ```
/// use multiprocess::{Process, SharedMemory};
///
/// fn fill(shm: SharedMemory) {
///     shm.write(0, b"written by the child").unwrap();
/// }
///
/// let shm = SharedMemory::new(64)?;
/// Process::spawn(fill, shm.clone())?.join()?;
/// let mut buf = [0u8; 20];
/// shm.read(0, &mut buf)?;
/// assert_eq!(&buf, b"written by the child");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    pub(crate) region: Arc<Region>,
    name: Option<Arc<Owner>>,
}

/// The memfd name of anonymous regions.
const KIND: &str = "multiprocess-shm";

/// The name of a named region, the process that created it (and so removes it) or 0, and the
/// identity of the object, so that a name removed and created again by someone else is left alone.
///
/// A pid, not a flag: a child started with `fork` gets a copy of its parent's handles, and dropping
/// them there must not remove the parent's name.
struct Owner {
    name: String,
    owner: i32,
    id: (u64, u64),
    /// Whether the owner unregistered the name already (an `unlink` before the drop).
    untracked: std::sync::atomic::AtomicBool,
}

impl Owner {
    fn new(name: &str, owner: i32, region: &Region) -> Arc<Owner> {
        Arc::new(Owner {
            name: name.to_string(),
            owner,
            id: region.id(),
            untracked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Removes the name if it still names this object; the owner also unregisters it.
    fn unlink(&self) -> io::Result<()> {
        let removed = if shm::name_refers_to(&self.name, self.id) {
            shm::unlink_named(&self.name)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{:?} no longer names this region", self.name),
            ))
        };
        let first = !self
            .untracked
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        if self.owner == crate::sys::getpid() && first {
            crate::process::untrack_name(&self.name, self.id);
        }
        removed
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.owner == crate::sys::getpid() {
            // Already removed (by `unlink`, or by another process) is fine; nothing else can be done here.
            if let Err(e) = self.unlink() {
                crate::trace::event!(
                    debug,
                    "dropping shared memory {:?}: could not remove its name: {e}",
                    self.name
                );
            }
        }
    }
}

impl SharedMemory {
    /// A new anonymous region of `size` zeroed bytes.
    ///
    /// # Errors
    /// The system is out of memory or address space.
    pub fn new(size: usize) -> io::Result<SharedMemory> {
        Ok(SharedMemory {
            region: Arc::new(Region::anonymous(KIND, size)?),
            name: None,
        })
    }

    /// Creates a named region of `size` zeroed bytes that other processes can [`open`](Self::open).
    /// This process owns the name: it is removed when the last handle here is dropped, or when this
    /// process ends without dropping it (killed, or exited), by its fork server (started here if it
    /// does not run yet; see [`StartMethod`](crate::StartMethod)).
    ///
    /// # Errors
    /// `AlreadyExists` if the name is taken; `InvalidInput` for an empty name, one with `/`, or over 250
    /// bytes.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::SharedMemory;
    /// let name = format!("mp-doc-{}", std::process::id());
    /// let a = SharedMemory::create(&name, 16)?;
    /// let b = SharedMemory::open(&name)?;
    /// a.write(0, &[7; 16])?;
    /// let mut buf = [0; 16];
    /// b.read(0, &mut buf)?;
    /// assert_eq!(buf, [7; 16]);
    /// drop(a); // the creator removes the name
    /// assert!(SharedMemory::open(&name).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(name: &str, size: usize) -> io::Result<SharedMemory> {
        let region = Arc::new(Region::named(name, true, size)?);
        // If this process dies without dropping it, its fork server removes the name.
        crate::process::track_name(name, &region);
        Ok(SharedMemory {
            name: Some(Owner::new(name, crate::sys::getpid(), &region)),
            region,
        })
    }

    /// Attaches to the named region `name`. The handle does not own the name.
    ///
    /// # Errors
    /// `NotFound` if there is no such region.
    pub fn open(name: &str) -> io::Result<SharedMemory> {
        let region = Region::named(name, false, 0)?;
        Ok(SharedMemory {
            name: Some(Owner::new(name, 0, &region)),
            region: Arc::new(region),
        })
    }

    /// Removes the name now (processes that have the region mapped keep it). Does nothing for an
    /// anonymous region.
    ///
    /// # Errors
    /// `NotFound` if the name is gone, or names another region now (one created under the same name
    /// after this one's was removed: that one is left alone).
    pub fn unlink(&self) -> io::Result<()> {
        match &self.name {
            Some(owner) => owner.unlink(),
            None => Ok(()),
        }
    }

    /// Removes a named region by name, for example one left behind by a crashed owner.
    pub fn remove(name: &str) -> io::Result<()> {
        shm::unlink_named(name)
    }

    /// The name, for a named region.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(|o| o.name.as_str())
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    /// `InvalidInput` if the range is outside the region.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        self.region.read_at(offset, buf)
    }

    /// Copies `buf` into the region at `offset`.
    ///
    /// # Errors
    /// `InvalidInput` if the range is outside the region.
    pub fn write(&self, offset: usize, buf: &[u8]) -> io::Result<()> {
        self.region.write_at(offset, buf)
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("len", &self.len())
            .finish()
    }
}

/// A region travels as its descriptor (beside the message) and its name; the receiver maps it (a
/// memfd must be a `SharedMemory`'s and sealed; a named region's mapping is guarded against
/// shrinking) and never owns the name.
impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            codec::FdRef(self.region.as_fd(), "SharedMemory"),
            self.name(),
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (fd, name) = <(codec::ReceivedFd, Option<String>)>::deserialize(d)?;
        let region = Region::receive(fd.0, KIND, true).map_err(serde::de::Error::custom)?;
        Ok(SharedMemory {
            name: name.map(|name| Owner::new(&name, 0, &region)),
            region: Arc::new(region),
        })
    }
}
