//! TLS under a [`Connection`](super::Connection) (the `tls` feature): the byte stream between two
//! Rust processes encrypted and the server (optionally the client too) authenticated by certificate.
//!
//! # Where TLS sits
//! A connection is a socket plus the framing above it. With TLS the framing is unchanged and only
//! the bytes under it change: a receive reads plaintext from rustls where it would read the socket,
//! a send hands its frame to rustls and writes the records rustls makes. Everything above the bytes
//! (message limits, forged lengths that never allocate, timeouts that lose nothing, the Python
//! authentication handshake, which runs inside TLS) is the same code for both.
//!
//! # One TLS state, two directions, no lock held across a wait
//! A connection sends from one thread while another receives, and rustls keeps one state for both
//! directions, so the state sits behind a mutex that is only ever held for work in memory (decrypt,
//! encrypt, a non-blocking read of the socket), never across a wait. A receive that finds no
//! plaintext reads what the socket has without blocking, lets rustls process it, and otherwise
//! releases the state and polls the socket. A send encrypts under the state's lock into a queue of
//! records, releases it, and writes the queue to the socket under the connection's send lock. The
//! order in which records are written is the order in which they were made (TLS numbers them), so
//! every record is queued under the state's lock and taken from the queue only under the send lock,
//! by whoever writes next; a receive that makes records of its own (an alert, a key update) writes
//! them only if no send is under way, else the next send does.
//!
//! # What does not change
//! The handshake runs to its end inside [`Client`](super::Client)'s `connect` and
//! [`Listener`](super::Listener)'s `accept` (with their deadline), so a connection is never handed
//! out half-made. Descriptors cannot travel over TLS, and a TLS connection cannot be sent to another
//! process (its keys live in this process's memory): both are refused with an error. A connection
//! ends with its TCP stream: a peer that closes at a message boundary is end-of-file, one that stops
//! inside a message is a truncated message, as without TLS.

#[cfg(feature = "tls")]
pub use on::*;

#[cfg(not(feature = "tls"))]
pub(crate) use off::{ClientTls, ServerTls, TlsError, Transport};

/// Without the feature there is no TLS transport: the type has no values, and every connection's
/// transport is the plain socket.
#[cfg(not(feature = "tls"))]
mod off {
    use std::io;
    use std::os::fd::BorrowedFd;
    use std::sync::Mutex;

    #[derive(Debug)]
    pub(crate) enum Transport {}

    /// Without the feature no listener or client has TLS configured: these have no values.
    #[derive(Debug, Clone)]
    pub(crate) enum ServerTls {}
    #[derive(Debug, Clone)]
    pub(crate) enum ClientTls {}
    #[derive(Debug)]
    pub(crate) enum TlsError {}

    impl Transport {
        pub(crate) fn read(
            &self,
            _: BorrowedFd<'_>,
            _: &Mutex<()>,
            _: &mut [u8],
        ) -> io::Result<usize> {
            match *self {}
        }

        pub(crate) fn read_vec(
            &self,
            _: BorrowedFd<'_>,
            _: &Mutex<()>,
            _: &mut Vec<u8>,
            _: usize,
        ) -> io::Result<usize> {
            match *self {}
        }

        pub(crate) fn write(&self, _: BorrowedFd<'_>, _: &[&[u8]]) -> io::Result<()> {
            match *self {}
        }

        pub(crate) fn buffered(&self) -> bool {
            match *self {}
        }

        pub(crate) fn pump(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            match *self {}
        }

        pub(crate) fn server(config: &ServerTls) -> Result<Transport, TlsError> {
            match *config {}
        }

        pub(crate) fn client(
            config: &ClientTls,
            _: &crate::Address,
        ) -> Result<Transport, TlsError> {
            match *config {}
        }

        pub(crate) fn handshake(
            &self,
            _: BorrowedFd<'_>,
            _: Option<std::time::Instant>,
        ) -> Result<(), TlsError> {
            match *self {}
        }

        pub(crate) fn handshake_step(&self, _: BorrowedFd<'_>) -> Result<bool, TlsError> {
            match *self {}
        }
    }
}

#[cfg(feature = "tls")]
mod on {
    use crate::sys;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::fmt;
    use std::io::{self, IoSlice, Read};
    use std::os::fd::BorrowedFd;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::Instant;

    /// The rustls this crate builds on (0.23), for configurations of your own: its types are
    /// part of this crate's API, so a major rustls release comes with a new version of this
    /// crate.
    pub use rustls;
    pub use rustls::{ClientConfig, ServerConfig};

    /// Plaintext is encrypted this much at a time: big enough for few socket writes per message,
    /// small enough that a large message never sits in memory twice.
    const CHUNK: usize = 256 << 10;

    /// A server configuration from a PEM certificate chain (the server's certificate first) and
    /// its PEM private key (PKCS#8, PKCS#1 or SEC1), with rustls's safe defaults (TLS 1.2 and 1.3,
    /// no client certificates) and the ring provider. For client certificates or other choices,
    /// build a [`ServerConfig`] with rustls and pass it to
    /// [`ListenerBuilder::tls`](crate::ListenerBuilder::tls) instead.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use multiprocess::{tls, Client, Listener};
    ///
    /// // A self-signed certificate for the example; use your own.
    /// let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    /// let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    ///
    /// let server = tls::server_config(cert_pem.as_bytes(), key_pem.as_bytes())?;
    /// let listener = Listener::builder("127.0.0.1:0").tls(server).bind()?;
    /// let address = listener.address().clone();
    /// let client = std::thread::spawn(move || -> Result<Vec<u8>, multiprocess::ClientError> {
    ///     let roots = tls::client_config(cert_pem.as_bytes())?;
    ///     let conn = Client::builder(&address).tls(roots).connect()?;
    ///     conn.send_bytes(b"over TLS").map_err(std::io::Error::other)?;
    ///     Ok(conn.recv_bytes().map_err(std::io::Error::other)?)
    /// });
    /// let conn = listener.accept()?;
    /// let got = conn.recv_bytes()?;
    /// conn.send_bytes(&got)?;
    /// assert_eq!(client.join().unwrap()?, b"over TLS");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The PEM text holds no certificate or no key, or rustls refuses them (a key that does not
    /// match the certificate, an unsupported algorithm): [`io::ErrorKind::InvalidData`].
    pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("the certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("the certificate chain holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid(format!("the private key: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(invalid)?;
        Ok(Arc::new(config))
    }

    /// A client configuration that trusts the certificates in `roots_pem` (a private CA's, or a
    /// self-signed server's own), with rustls's safe defaults and the ring provider. For the web's
    /// root store, client certificates or other choices, build a [`ClientConfig`] with rustls and
    /// pass it to [`ClientBuilder::tls`](crate::ClientBuilder::tls) instead.
    ///
    /// See [`server_config`] for an example.
    ///
    /// # Errors
    /// The PEM text holds no certificate, or one rustls cannot use as a root:
    /// [`io::ErrorKind::InvalidData`].
    pub fn client_config(roots_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem) {
            let cert = cert.map_err(|e| invalid(format!("a root certificate: {e}")))?;
            roots.add(cert).map_err(invalid)?;
        }
        if roots.is_empty() {
            return Err(invalid("the root certificates hold no certificate"));
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The provider is named, not taken from the process default, which panics when a program's
    /// dependencies enable more than one.
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// The TLS state of one connection (shared by its clones).
    pub(crate) struct Transport {
        state: Mutex<State>,
    }

    struct State {
        tls: rustls::Connection,
        /// Records made and not yet written, in the order they were made.
        out: Vec<u8>,
        /// The socket reported end-of-file.
        eof: bool,
        /// Where the incoming byte stream is among TLS records (to tell a stream that ends
        /// between records from one cut inside a record).
        records: Records,
    }

    /// Follows the TLS record headers of a byte stream: 5 bytes (type, version, length), then
    /// that many bytes.
    #[derive(Default)]
    struct Records {
        header: [u8; 5],
        header_got: usize,
        body_left: usize,
    }

    impl Records {
        fn saw(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                if self.body_left > 0 {
                    let n = self.body_left.min(bytes.len());
                    self.body_left -= n;
                    bytes = &bytes[n..];
                    continue;
                }
                let n = (5 - self.header_got).min(bytes.len());
                self.header[self.header_got..self.header_got + n].copy_from_slice(&bytes[..n]);
                self.header_got += n;
                bytes = &bytes[n..];
                if self.header_got == 5 {
                    self.header_got = 0;
                    self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]).into();
                }
            }
        }

        /// Between two records.
        fn at_boundary(&self) -> bool {
            self.header_got == 0 && self.body_left == 0
        }
    }

    impl fmt::Debug for Transport {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Transport").finish_non_exhaustive()
        }
    }

    /// Why a TLS handshake did not finish: in [`ClientError::Tls`](crate::ClientError::Tls) and
    /// [`AcceptError::Tls`](crate::AcceptError::Tls).
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum TlsError {
        /// TLS refused the peer or was refused by it: a certificate not trusted, a name that does
        /// not match, no common protocol version, or a peer that does not speak TLS.
        #[error("TLS refused: {0}")]
        Refused(#[source] rustls::Error),
        /// The handshake did not finish by its deadline.
        #[error("the TLS handshake did not finish in time")]
        Timeout,
        /// The socket failed, or the peer closed it during the handshake.
        #[error("the TLS handshake failed: {0}")]
        Io(#[source] io::Error),
    }

    /// The server side of a new connection's TLS.
    pub(crate) type ServerTls = Arc<ServerConfig>;

    /// The client side: the configuration, and the name the server's certificate must carry
    /// (`None`: the address's IP, or `localhost` for a Unix socket).
    #[derive(Clone, Debug)]
    pub(crate) struct ClientTls {
        pub(crate) config: Arc<ClientConfig>,
        pub(crate) name: Option<String>,
    }

    /// Reads the socket without waiting: the TLS state only ever reads what is already there.
    struct NoWait<'a>(BorrowedFd<'a>, &'a mut Records);

    impl Read for NoWait<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // Descriptors attached by a local peer are dropped (closed) with the inbox.
            let mut inbox = sys::Inbox::default();
            let n = sys::recv_into_slice(self.0, buf, &mut inbox, true, true)?;
            self.1.saw(&buf[..n]);
            Ok(n)
        }
    }

    impl Transport {
        pub(crate) fn client(
            setup: &ClientTls,
            address: &crate::Address,
        ) -> Result<Transport, TlsError> {
            let name = match (&setup.name, address) {
                (Some(name), _) => ServerName::try_from(name.clone()).map_err(|e| {
                    TlsError::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{name:?} is not a server name for TLS: {e}"),
                    ))
                })?,
                (None, crate::Address::Tcp(a)) => ServerName::IpAddress(a.ip().into()),
                (None, _) => ServerName::try_from("localhost").expect("a valid DNS name"),
            };
            let tls = rustls::ClientConnection::new(setup.config.clone(), name)
                .map_err(TlsError::Refused)?;
            Ok(Transport::new(tls.into()))
        }

        pub(crate) fn server(config: &ServerTls) -> Result<Transport, TlsError> {
            let tls = rustls::ServerConnection::new(config.clone()).map_err(TlsError::Refused)?;
            Ok(Transport::new(tls.into()))
        }

        fn new(mut tls: rustls::Connection) -> Transport {
            // Sends bound their own chunks (`CHUNK`); rustls's default limit would only split them.
            tls.set_buffer_limit(None);
            Transport {
                state: Mutex::new(State {
                    tls,
                    out: Vec::new(),
                    eof: false,
                    records: Records::default(),
                }),
            }
        }

        fn state(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Plaintext (or the end of the stream) is waiting in memory: a read returns at once.
        pub(crate) fn buffered(&self) -> bool {
            let mut s = self.state();
            s.eof
                || s.tls.process_new_packets().map_or(true, |io| {
                    io.plaintext_bytes_to_read() > 0 || io.peer_has_closed()
                })
        }

        /// Reads plaintext into `buf` without waiting: `WouldBlock` when none has arrived, 0 at the
        /// end of the stream (with or without the peer's close_notify: the framing above tells a
        /// clean end from a cut one). Records the read made (an alert, a key update) are written
        /// if no send holds `tx`, else the next send writes them.
        pub(crate) fn read(
            &self,
            fd: BorrowedFd<'_>,
            tx: &Mutex<()>,
            buf: &mut [u8],
        ) -> io::Result<usize> {
            self.read_with(fd, tx, buf.len(), |reader, n| reader.read(&mut buf[..n]))
        }

        /// Like [`read`](Self::read), appending at most `max` bytes to `buf`: it grows by what
        /// has arrived, never by more.
        pub(crate) fn read_vec(
            &self,
            fd: BorrowedFd<'_>,
            tx: &Mutex<()>,
            buf: &mut Vec<u8>,
            max: usize,
        ) -> io::Result<usize> {
            self.read_with(fd, tx, max, |reader, n| {
                let start = buf.len();
                buf.resize(start + n, 0);
                let got = reader.read(&mut buf[start..]);
                buf.truncate(start + *got.as_ref().unwrap_or(&0));
                got
            })
        }

        fn read_with(
            &self,
            fd: BorrowedFd<'_>,
            tx: &Mutex<()>,
            max: usize,
            fill: impl FnOnce(&mut rustls::Reader<'_>, usize) -> io::Result<usize>,
        ) -> io::Result<usize> {
            let mut s = self.state();
            let got = (|| loop {
                let state = s.tls.process_new_packets().map_err(invalid)?;
                let available = state.plaintext_bytes_to_read();
                if available > 0 {
                    return fill(&mut s.tls.reader(), available.min(max));
                }
                if state.peer_has_closed() {
                    return Ok(0);
                }
                if s.eof {
                    // A cut between records reads as the end, as a closed socket does without TLS
                    // (the framing above tells a cut inside a message); one inside a record lost
                    // bytes that were sent.
                    if s.records.at_boundary() {
                        return Ok(0);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a TLS record",
                    ));
                }
                if !s.take_in(fd)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            })();
            // Records this made (an alert for what was refused, a key update) go out now if no
            // send is under way (the send writes them first otherwise), without waiting on the
            // socket: a receive never blocks in a write. What does not fit stays queued, in order.
            if !s.out.is_empty()
                && let Ok(_sending) = tx.try_lock()
            {
                // Best effort: a socket that fails here fails the next send, which reports it.
                if let Ok(n) = sys::send_with(fd, &[IoSlice::new(&s.out)], &[], true) {
                    s.out.drain(..n);
                }
            }
            got
        }

        /// Takes in what the socket holds, without waiting for more (for `wait`/`poll`, after the
        /// socket was readable: the bytes may be a record that carries no message).
        pub(crate) fn pump(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
            self.state().take_in(fd).map(drop)
        }

        /// Encrypts the concatenation of `parts` and writes it (the caller holds the send lock),
        /// `CHUNK` bytes at a time: a small message's header and payload share their records and
        /// one socket write.
        pub(crate) fn write(&self, fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
            let mut queued = Vec::new();
            let mut rest: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
            rest.reverse(); // taken from the end
            while !rest.is_empty() {
                // The next chunk: whole parts while they fit, then the front of the next one.
                let mut batch: Vec<&[u8]> = Vec::new();
                let mut size = 0;
                while size < CHUNK
                    && let Some(part) = rest.pop()
                {
                    let take = part.len().min(CHUNK - size);
                    batch.push(&part[..take]);
                    size += take;
                    if take < part.len() {
                        rest.push(&part[take..]);
                    }
                }
                {
                    let mut s = self.state();
                    let mut w = s.tls.writer();
                    // Without a buffer limit rustls takes everything offered at once; the loop
                    // is for a writer that would not.
                    while !batch.is_empty() {
                        let iov: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
                        let mut n = io::Write::write_vectored(&mut w, &iov)?;
                        if n == 0 {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                        while n > 0 {
                            if n >= batch[0].len() {
                                n -= batch.remove(0).len();
                            } else {
                                batch[0] = &batch[0][n..];
                                n = 0;
                            }
                        }
                    }
                    s.queue();
                    // Records a receive queued earlier go first: they were made first.
                    std::mem::swap(&mut s.out, &mut queued);
                }
                write_socket(fd, &queued)?;
                queued.clear();
            }
            self.flush(fd)
        }

        /// Writes the records queued by a receive (under the send lock).
        pub(crate) fn flush(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
            let out = std::mem::take(&mut self.state().out);
            write_socket(fd, &out)
        }

        /// Runs the handshake to its end: the caller holds the connection alone (inside
        /// `connect`), so it reads and writes as it pleases.
        pub(crate) fn handshake(
            &self,
            fd: BorrowedFd<'_>,
            deadline: Option<Instant>,
        ) -> Result<(), TlsError> {
            loop {
                match self.handshake_step(fd) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(e),
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(TlsError::Timeout);
                }
                if !sys::poll_readable(&[fd], deadline).map_err(TlsError::Io)?[0] {
                    return Err(TlsError::Timeout);
                }
            }
        }

        /// One step of the handshake on what the socket holds now: whether it is complete. The
        /// records the step makes are written at once (a handshake's flight is a few KiB, which a
        /// fresh socket's buffer takes without blocking).
        pub(crate) fn handshake_step(&self, fd: BorrowedFd<'_>) -> Result<bool, TlsError> {
            let taken = {
                let mut s = self.state();
                let taken = s.take_in(fd);
                s.queue();
                taken
            };
            // The records (an alert, when TLS refused) go out before the verdict comes back.
            self.flush(fd).map_err(TlsError::Io)?;
            match taken {
                Ok(_) => {}
                Err(e) => {
                    return Err(
                        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                            Some(tls) => TlsError::Refused(tls.clone()),
                            None => TlsError::Io(e),
                        },
                    );
                }
            }
            let s = self.state();
            if !s.tls.is_handshaking() {
                return Ok(true);
            }
            if s.eof {
                return Err(TlsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            Ok(false)
        }
    }

    impl State {
        /// Reads what the socket holds (without waiting) and processes it; whether anything came.
        /// A TLS error is an `InvalidData` error with the rustls error inside.
        fn take_in(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
            match self.tls.read_tls(&mut NoWait(fd, &mut self.records)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            let processed = self.tls.process_new_packets();
            // Whatever processing made (an alert, a key update, the handshake's next flight).
            self.queue();
            processed.map_err(invalid)?;
            Ok(true)
        }

        /// Moves the records rustls has made onto the queue.
        fn queue(&mut self) {
            while self.tls.wants_write() {
                // Writing into a Vec cannot fail.
                if self.tls.write_tls(&mut self.out).is_err() {
                    break;
                }
            }
        }
    }

    fn write_socket(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = sys::send_vectored(fd, &[IoSlice::new(bytes)], &[])?;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}
