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
//! # Not under the server's lock
//! A served object's call runs under that object's own mutex, never under the lock of the whole
//! server: a slow method delays the calls on the same object, nobody else's. A method that panics
//! answers [`RemoteError::Served`] and leaves the object as the panic left it (the server goes on).

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

    /// Makes a `name` from its encoded `init`.
    pub(crate) fn make(&self, name: &str, init: &[u8]) -> Result<ServedObject, RemoteError> {
        let factory = self
            .types
            .get(name)
            .ok_or_else(|| RemoteError::UnknownType(name.to_string()))?;
        let made = std::panic::catch_unwind(|| factory(init))
            .map_err(|p| RemoteError::Served(format!("{name}::new panicked: {}", message(&*p))))?
            .map_err(RemoteError::Served)?;
        Ok(ServedObject(Arc::new(Mutex::new(made))))
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
    fn call(&mut self, request: &[u8]) -> Result<Bytes, String>;
}

struct Typed<T>(T);

impl<T: Serve> Erased for Typed<T> {
    fn call(&mut self, request: &[u8]) -> Result<Bytes, String> {
        let request: T::Request = crate::codec::decode(request, Vec::new())
            .map_err(|e| format!("a request that is not a {} request: {e}", T::NAME))?;
        let response = self.0.call(request);
        let (bytes, _) = crate::codec::encode(&response)
            .map_err(|e| format!("a {} response that does not encode: {e}", T::NAME))?;
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
pub(crate) struct ServedObject(Arc<Mutex<Box<dyn Erased>>>);

impl fmt::Debug for ServedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServedObject")
    }
}

impl ServedObject {
    /// Runs one call (a panic is an error; the object stays usable).
    pub(crate) fn call(&self, request: &[u8]) -> Result<Bytes, RemoteError> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(request))) {
            Ok(r) => r.map_err(RemoteError::Served),
            Err(p) => Err(RemoteError::Served(format!(
                "the call panicked: {}",
                message(&*p)
            ))),
        }
    }
}
