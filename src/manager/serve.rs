//! Types of your own served by a manager (Python's `BaseManager.register`): the object lives in
//! the server, its methods run there, and clients call it through a typed proxy.
//!
//! # Typed at both ends, named on the wire
//! A served type says what it takes to make one (`Init`), what a call asks (`Request`, usually an
//! enum of its methods) and what a call answers (`Response`). The client's [`Served<T>`] proxy
//! only accepts `T::Request` and only returns `T::Response`, so a call that does not fit is a
//! compile error; on the wire the type is its [`Serve::NAME`], which the server must have been
//! told of ([`Registry::register`]), and a request that does not decode as `T::Request` is a
//! typed error ([`RemoteError::Served`]) and changes nothing.
//!
//! # Not under the server's lock, and not in the way of the connection
//! A served object's call runs under that object's own mutex, never under the lock of the whole
//! server: a slow method delays the calls on the same object, nobody else's. It runs on the thread
//! that read it from the client's connection (no hand-off for a quick call), and a call still
//! running after 2 ms hands that connection to a fresh reader thread, so the client's other
//! threads go on being served meanwhile (see the server's notes; a method that never returns
//! holds a server thread for good, and stopping the server waits for it). A method that panics
//! answers [`RemoteError::Served`] and leaves the object as the panic left it (the server goes on);
//! so does a `Drop` that panics, which runs outside the server's lock.
//!
//! # The type is checked where it can be
//! A proxy that arrives in another process is told which type it was made for: attaching a
//! `Served<A>` to an object made as a `B` is refused ([`RemoteError::WrongKind`]) before any
//! call, since `A`'s requests might decode as `B`'s and do the wrong thing quietly.

use super::RemoteError;
use super::proto::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A type whose values a manager holds and whose calls it runs.
///
/// # Examples
/// ```
/// use multiprocess::manager::{Manager, Registrations, Registry, Serve};
///
/// /// A counter that lives in the manager.
/// struct Counter(u64);
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum CounterCall {
///     Add(u64),
///     Get,
/// }
///
/// impl Serve for Counter {
///     const NAME: &'static str = "example.Counter";
///     type Init = u64;
///     type Request = CounterCall;
///     type Response = u64;
///     fn new(start: u64) -> Counter {
///         Counter(start)
///     }
///     fn call(&mut self, call: CounterCall) -> u64 {
///         if let CounterCall::Add(n) = call {
///             self.0 += n;
///         }
///         self.0
///     }
/// }
///
/// /// What this program's manager serves.
/// struct Types;
/// impl Registrations for Types {
///     fn register(r: &mut Registry) {
///         r.register::<Counter>();
///     }
/// }
///
/// let m = Manager::builder().serving::<Types>().start()?;
/// let c = m.served::<Counter>(&10)?;
/// assert_eq!(c.call(&CounterCall::Add(5))?, 15);
/// assert_eq!(c.call(&CounterCall::Get)?, 15);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Serve: Send + 'static {
    /// The type's name on the wire: the same in the server and every client, unique among the
    /// server's types.
    const NAME: &'static str;
    /// What making one takes.
    type Init: Serialize + DeserializeOwned;
    /// What a call asks.
    type Request: Serialize + DeserializeOwned;
    /// What a call answers.
    type Response: Serialize + DeserializeOwned;
    /// Makes one (in the server).
    fn new(init: Self::Init) -> Self;
    /// Runs one call (in the server).
    fn call(&mut self, request: Self::Request) -> Self::Response;
}

/// The types a server serves, by name.
#[derive(Default, Clone)]
pub struct Registry {
    types: HashMap<&'static str, Factory>,
}

type Factory = fn(&[u8]) -> Result<Box<dyn Erased>, String>;

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.types.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("types", &names).finish()
    }
}

impl Registry {
    /// Serves `T` (a second type of the same name replaces the first).
    pub fn register<T: Serve>(&mut self) -> &mut Self {
        self.types.insert(T::NAME, make::<T>);
        self
    }

    /// Whether it serves no type.
    pub(crate) fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Makes a `name` from its encoded `init`.
    pub(crate) fn make(&self, name: &str, init: &[u8]) -> Result<ServedObject, RemoteError> {
        let (&name, factory) = self
            .types
            .get_key_value(name)
            .ok_or_else(|| RemoteError::UnknownType(name.to_string()))?;
        let made = std::panic::catch_unwind(|| factory(init))
            .map_err(|p| RemoteError::Served(format!("{name}::new panicked: {}", message(&*p))))?
            .map_err(RemoteError::Served)?;
        Ok(ServedObject(Arc::new(Cell {
            name,
            object: Mutex::new(Some(made)),
        })))
    }
}

/// The types a started manager serves (see [`ManagerBuilder::serving`](super::ManagerBuilder::serving)):
/// implemented by a type of yours, usually an empty one, whose `register` names them.
pub trait Registrations: 'static {
    /// Registers the types.
    fn register(registry: &mut Registry);
}

/// No types of your own.
#[derive(Debug)]
pub(crate) struct Nothing;

impl Registrations for Nothing {
    fn register(_: &mut Registry) {}
}

/// A served value, its type erased: bytes in, bytes out.
pub(crate) trait Erased: Send {
    fn call(&mut self, request: &[u8]) -> Result<Bytes, Failed>;
}

/// Why a served call has no answer.
pub(crate) enum Failed {
    /// The request is not one of the type's: nothing ran.
    Request(String),
    /// The method ran, and its answer did not encode.
    Response(String),
}

struct Typed<T>(T);

impl<T: Serve> Erased for Typed<T> {
    fn call(&mut self, request: &[u8]) -> Result<Bytes, Failed> {
        let request: T::Request = crate::codec::decode(request, Vec::new()).map_err(|e| {
            Failed::Request(format!("a request that is not a {} request: {e}", T::NAME))
        })?;
        let response = self.0.call(request);
        let (bytes, _) = crate::codec::encode(&response).map_err(|e| {
            Failed::Response(format!("a {} response that does not encode: {e}", T::NAME))
        })?;
        Ok(Bytes::from(bytes))
    }
}

fn make<T: Serve>(init: &[u8]) -> Result<Box<dyn Erased>, String> {
    let init: T::Init = crate::codec::decode(init, Vec::new())
        .map_err(|e| format!("an init that is not a {} init: {e}", T::NAME))?;
    Ok(Box::new(Typed(T::new(init))))
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A served object in the server: shared so that its calls run outside the server's lock.
#[derive(Clone)]
pub(crate) struct ServedObject(Arc<Cell>);

struct Cell {
    /// Its type's [`Serve::NAME`].
    name: &'static str,
    /// `None` only while it is dropped.
    object: Mutex<Option<Box<dyn Erased>>>,
}

/// The object's own `Drop` may panic: that must not take down whichever server thread let go of
/// it last (the timer freeing it, or a reader finishing its last call).
impl Drop for Cell {
    fn drop(&mut self) {
        let object = self
            .object
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(object))) {
            crate::trace::event!(
                warn,
                "manager: dropping a {} panicked: {}",
                self.name,
                message(&*p)
            );
        }
    }
}

impl fmt::Debug for ServedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServedObject({})", self.0.name)
    }
}

impl ServedObject {
    /// Its type's name.
    pub(crate) fn type_name(&self) -> &'static str {
        self.0.name
    }

    /// Runs one call (a panic is an error; the object stays usable). The flag says whether the
    /// method ran (and so may have changed the object), even if the call failed.
    pub(crate) fn call(&self, request: &[u8]) -> (Result<Bytes, RemoteError>, bool) {
        let mut inner = self.0.object.lock().unwrap_or_else(|p| p.into_inner());
        let Some(object) = inner.as_mut() else {
            return (Err(RemoteError::Served("the object is gone".into())), false);
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.call(request))) {
            Ok(Ok(bytes)) => (Ok(bytes), true),
            Ok(Err(Failed::Request(why))) => (Err(RemoteError::Served(why)), false),
            Ok(Err(Failed::Response(why))) => (Err(RemoteError::Served(why)), true),
            Err(p) => (
                Err(RemoteError::Served(format!(
                    "the call panicked: {}",
                    message(&*p)
                ))),
                true,
            ),
        }
    }
}
