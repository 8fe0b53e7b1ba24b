//! A xenstore client over the domain's store ring page (Xen's xs_wire).
//!
//! The page named by `start_info.store_mfn` holds two 1 KiB byte rings:
//! requests from this guest to the store, and replies plus watch events from
//! the store. Each message is an [`XsdSockmsg`] header followed by at most
//! [`XENSTORE_PAYLOAD_MAX`] bytes of NUL-separated strings, and may cross the
//! ring in several pieces. `store_evtchn` signals the other end after either
//! side moved bytes.
//!
//! The protocol core, [`Client`], never touches memory or hypercalls itself:
//! it reaches the page through [`RingPage`] and the event channel through
//! [`Transport`], so it runs on the host against a simulated store. It keeps
//! one request in flight, matches the reply by `req_id`, queues the
//! `XS_WATCH_EVENT`s that arrive meanwhile (see
//! [`Client::next_watch_event`]) and turns `XS_ERROR` into an [`Errno`].
//! Everything the store sends is untrusted: a header announcing more than
//! [`XENSTORE_PAYLOAD_MAX`] bytes, or ring indices further apart than the ring
//! is long, is a protocol error (`EIO`) after which the client refuses further
//! work, never a panic.
//!
//! The kernel glue at the end of this module ([`connect`],
//! [`from_start_info`]) reaches the page through the bootstrap 1:1 mapping and
//! waits on the store port with `SCHEDOP_poll`:
//!
//! ```no_run
//! # fn demo() -> Result<(), pv_guest_kernel::Errno> {
//! let mut xs = pv_guest_kernel::xenstore::connect()?;
//! let name = xs.read("name")?;                      // relative to the home path
//! xs.write("data/greeting", b"hello")?;
//! xs.watch("control/shutdown", "shutdown")?;
//! let ev = xs.next_watch_event()?;                  // blocks on the store port
//! # let _ = (name, ev);
//! # Ok(())
//! # }
//! ```

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};

use guest_abi::errno::Errno;
use guest_abi::io::xenstore::{
    XENSTORE_ERROR_NONE, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
    XS_DIRECTORY, XS_DIRECTORY_PART, XS_ERROR, XS_GET_DOMAIN_PATH, XS_GET_PERMS, XS_MKDIR, XS_READ,
    XS_RM, XS_SET_PERMS, XS_TRANSACTION_END, XS_TRANSACTION_START, XS_UNWATCH, XS_WATCH,
    XS_WATCH_EVENT, XS_WRITE, XenstoreDomainInterface, XsdSockmsg, parse_error,
};
use zerocopy::{FromBytes, IntoBytes};

/// The transaction id meaning "no transaction".
pub const NO_TX: u32 = 0;

/// Size of a message header.
const HEADER: usize = size_of::<XsdSockmsg>();
/// Ring length as an index distance.
const RING: u32 = XENSTORE_RING_SIZE as u32;
/// How many times [`Client::directory`] restarts a piecewise listing whose
/// directory changed under it before giving up with `EAGAIN`.
const DIRECTORY_RESTARTS: usize = 8;

/// Byte offset of the request ring in the page.
pub const REQ_RING_OFFSET: usize = offset_of!(XenstoreDomainInterface, req);
/// Byte offset of the reply ring in the page.
pub const RSP_RING_OFFSET: usize = offset_of!(XenstoreDomainInterface, rsp);

/// A 32-bit field of the ring page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// Request bytes consumed by the store.
    ReqCons,
    /// Request bytes produced by the guest.
    ReqProd,
    /// Reply bytes consumed by the guest.
    RspCons,
    /// Reply bytes produced by the store.
    RspProd,
    /// `XENSTORE_SERVER_FEATURE_*` bits the store offers.
    ServerFeatures,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    Connection,
    /// `XENSTORE_ERROR_*` the store reported (if it offers the feature).
    Error,
}

impl Field {
    /// Byte offset of the field in the page (4-byte aligned).
    #[must_use]
    pub const fn offset(self) -> usize {
        match self {
            Self::ReqCons => offset_of!(XenstoreDomainInterface, req_cons),
            Self::ReqProd => offset_of!(XenstoreDomainInterface, req_prod),
            Self::RspCons => offset_of!(XenstoreDomainInterface, rsp_cons),
            Self::RspProd => offset_of!(XenstoreDomainInterface, rsp_prod),
            Self::ServerFeatures => offset_of!(XenstoreDomainInterface, server_features),
            Self::Connection => offset_of!(XenstoreDomainInterface, connection),
            Self::Error => offset_of!(XenstoreDomainInterface, error),
        }
    }
}

/// Access to the store ring page, which the store writes concurrently.
///
/// Ring offsets are bytes from the start of the ring concerned, and the
/// client only ever asks for ranges inside it (`off + len <=` 1024); the
/// client copies each byte it needs exactly once. An implementation over a
/// live mapping uses volatile accesses and real barriers; a test one may use
/// plain memory and no-op barriers.
pub trait RingPage {
    /// Reads `field` once.
    fn load(&self, field: Field) -> u32;
    /// Writes `field` once.
    fn store(&self, field: Field, value: u32);
    /// Copies `data` into the request ring at ring offset `off`.
    fn write_req(&self, off: usize, data: &[u8]);
    /// Copies `out.len()` bytes of the reply ring from ring offset `off`.
    fn read_rsp(&self, off: usize, out: &mut [u8]);
    /// Full barrier: accesses before it are visible to the store before any
    /// access after it.
    fn fence(&self);
    /// Read barrier: loads before it complete before loads after it.
    /// Defaults to [`fence`](Self::fence).
    fn read_fence(&self) {
        self.fence();
    }
    /// Write barrier: stores before it are visible before stores after it.
    /// Defaults to [`fence`](Self::fence).
    fn write_fence(&self) {
        self.fence();
    }
}

impl<P: RingPage + ?Sized> RingPage for &P {
    fn load(&self, field: Field) -> u32 {
        (**self).load(field)
    }
    fn store(&self, field: Field, value: u32) {
        (**self).store(field, value);
    }
    fn write_req(&self, off: usize, data: &[u8]) {
        (**self).write_req(off, data);
    }
    fn read_rsp(&self, off: usize, out: &mut [u8]) {
        (**self).read_rsp(off, out);
    }
    fn fence(&self) {
        (**self).fence();
    }
    fn read_fence(&self) {
        (**self).read_fence();
    }
    fn write_fence(&self) {
        (**self).write_fence();
    }
}

/// The store's event channel, as the client needs it.
pub trait Transport {
    /// Signals the store that the rings changed.
    fn notify(&mut self) -> Result<(), Errno>;
    /// Blocks until the store signals (or returns early: the client checks
    /// the rings again either way). A signal that arrived since the previous
    /// call must make this return at once. An error ends the operation in
    /// progress with that error.
    fn wait(&mut self) -> Result<(), Errno>;
}

/// A watch firing: `path` changed, for the watch registered with `token`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The path that changed (relative if the watch was set relative).
    pub path: String,
    /// The token the watch was registered with.
    pub token: String,
}

/// A message received whole.
struct Message {
    header: XsdSockmsg,
    payload: Vec<u8>,
}

/// A xenstore client over a ring page `P` and event channel `T`.
pub struct Client<P, T> {
    page: P,
    transport: T,
    /// Our copy of `req_prod` (only we write it).
    req_prod: u32,
    /// Our copy of `rsp_cons` (only we write it).
    rsp_cons: u32,
    next_req_id: u32,
    /// The message being received: header and payload bytes so far.
    rx: Vec<u8>,
    /// Watch events received and not yet handed out.
    events: VecDeque<WatchEvent>,
    /// A protocol error broke the byte stream; every call fails with `EIO`.
    broken: bool,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The NUL-terminated strings of `payload`, without their NULs; bytes after
/// the last NUL are ignored.
fn strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = payload.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
    payload[..end]
        .split_inclusive(|&b| b == 0)
        .map(|s| &s[..s.len() - 1])
}

/// A reply's single string (a trailing NUL, if any, removed).
fn one_string(payload: &[u8]) -> &[u8] {
    payload.strip_suffix(&[0]).unwrap_or(payload)
}

/// Appends `s` and a NUL; `EINVAL` if `s` itself holds a NUL (it would
/// split into two arguments).
fn push_arg(out: &mut Vec<u8>, s: &str) -> Result<(), Errno> {
    if s.as_bytes().contains(&0) {
        return Err(Errno::EINVAL);
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

fn arg(s: &str) -> Result<Vec<u8>, Errno> {
    let mut v = Vec::with_capacity(s.len() + 1);
    push_arg(&mut v, s)?;
    Ok(v)
}

impl<P: RingPage, T: Transport> Client<P, T> {
    /// A client over `page` and `transport`, picking up the ring indices
    /// where they stand.
    pub fn new(page: P, transport: T) -> Self {
        let req_prod = page.load(Field::ReqProd);
        let rsp_cons = page.load(Field::RspCons);
        Self {
            page,
            transport,
            req_prod,
            rsp_cons,
            next_req_id: 1,
            rx: Vec::new(),
            events: VecDeque::new(),
            broken: false,
        }
    }

    /// The transport (to inspect it, or to reach its hooks).
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The ring page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Whether a protocol error broke the connection (every call now fails
    /// with `EIO`).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Watch events received and not handed out yet.
    pub fn queued_watch_events(&self) -> usize {
        self.events.len()
    }

    fn protocol_error<R>(&mut self) -> Result<R, Errno> {
        self.broken = true;
        Err(Errno::EIO)
    }

    /// `EIO` if the store flagged an error in the page.
    fn check_page_error(&mut self) -> Result<(), Errno> {
        if self.page.load(Field::ServerFeatures) & XENSTORE_SERVER_FEATURE_ERROR != 0
            && self.page.load(Field::Error) != XENSTORE_ERROR_NONE
        {
            return self.protocol_error();
        }
        Ok(())
    }

    /// Copies as much of `data` into the request ring as fits and publishes
    /// it. Returns the bytes written.
    fn send_some(&mut self, data: &[u8]) -> Result<usize, Errno> {
        let cons = self.page.load(Field::ReqCons);
        // Read the consumer index before overwriting the bytes it frees.
        self.page.fence();
        let used = self.req_prod.wrapping_sub(cons);
        if used > RING {
            return self.protocol_error();
        }
        let mut free = (RING - used) as usize;
        let mut done = 0;
        while free > 0 && done < data.len() {
            let off = (self.req_prod.wrapping_add(done as u32) % RING) as usize;
            let n = free.min(data.len() - done).min(XENSTORE_RING_SIZE - off);
            self.page.write_req(off, &data[done..done + n]);
            done += n;
            free -= n;
        }
        if done > 0 {
            // The bytes must be visible before the index that publishes them.
            self.page.write_fence();
            self.req_prod = self.req_prod.wrapping_add(done as u32);
            self.page.store(Field::ReqProd, self.req_prod);
        }
        Ok(done)
    }

    /// Bytes still missing from the message being received.
    fn rx_missing(&mut self) -> Result<usize, Errno> {
        if self.rx.len() < HEADER {
            return Ok(HEADER - self.rx.len());
        }
        let len = XsdSockmsg::read_from_prefix(&self.rx).map_or(0, |(h, _)| h.len) as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            return self.protocol_error();
        }
        Ok(HEADER + len - self.rx.len())
    }

    /// Reads reply-ring bytes until one message is complete or the ring is
    /// empty. Returns whether bytes were consumed, and the message if one
    /// completed.
    fn recv_message(&mut self) -> Result<(bool, Option<Message>), Errno> {
        let mut consumed = false;
        loop {
            let missing = self.rx_missing()?;
            if missing == 0 {
                let bytes = core::mem::take(&mut self.rx);
                let Ok((header, payload)) = XsdSockmsg::read_from_prefix(&bytes) else {
                    return self.protocol_error();
                };
                return Ok((
                    consumed,
                    Some(Message {
                        header,
                        payload: payload.to_vec(),
                    }),
                ));
            }
            let prod = self.page.load(Field::RspProd);
            // Read the bytes only after the index that covers them.
            self.page.read_fence();
            let avail = prod.wrapping_sub(self.rsp_cons);
            if avail > RING {
                return self.protocol_error();
            }
            if avail == 0 {
                return Ok((consumed, None));
            }
            let mut want = missing.min(avail as usize);
            while want > 0 {
                let off = (self.rsp_cons % RING) as usize;
                let n = want.min(XENSTORE_RING_SIZE - off);
                let start = self.rx.len();
                self.rx.resize(start + n, 0);
                self.page.read_rsp(off, &mut self.rx[start..]);
                self.rsp_cons = self.rsp_cons.wrapping_add(n as u32);
                want -= n;
            }
            // Finish reading before handing the space back.
            self.page.fence();
            self.page.store(Field::RspCons, self.rsp_cons);
            consumed = true;
        }
    }

    /// Receives every whole message available: watch events are queued, the
    /// reply to `expect` (if given) is returned, anything else is dropped.
    /// Returns whether bytes moved.
    fn drain(&mut self, expect: Option<u32>) -> Result<(bool, Option<Message>), Errno> {
        let mut moved = false;
        let mut reply = None;
        loop {
            let (consumed, msg) = self.recv_message()?;
            moved |= consumed;
            let Some(m) = msg else { break };
            if m.header.type_ == XS_WATCH_EVENT {
                let mut parts = strings(&m.payload);
                if let (Some(path), Some(token)) = (parts.next(), parts.next()) {
                    self.events.push_back(WatchEvent {
                        path: text(path),
                        token: text(token),
                    });
                }
            } else if Some(m.header.req_id) == expect {
                reply = Some(m);
                break;
            }
            // Anything else (a reply nobody waits for) is dropped.
        }
        if moved {
            // The store may be waiting for room in the reply ring.
            self.transport.notify()?;
        }
        Ok((moved, reply))
    }

    /// Sends one request and returns its reply's payload.
    fn request(&mut self, ty: u32, tx: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        if self.broken {
            return Err(Errno::EIO);
        }
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(Errno::E2BIG);
        }
        self.check_page_error()?;
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        let header = XsdSockmsg {
            type_: ty,
            req_id,
            tx_id: tx,
            len: payload.len() as u32,
        };
        let mut msg = Vec::with_capacity(HEADER + payload.len());
        msg.extend_from_slice(header.as_bytes());
        msg.extend_from_slice(payload);
        let mut sent = 0;
        let reply = loop {
            let step = self.request_step(&msg, &mut sent, req_id);
            match step {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => {
                    // A request cut short leaves the stream misaligned.
                    if sent > 0 && sent < msg.len() {
                        self.broken = true;
                    }
                    return Err(e);
                }
            }
        };
        match reply.header.type_ {
            XS_ERROR => Err(parse_error(&reply.payload).unwrap_or(Errno::EIO)),
            t if t == ty => Ok(reply.payload),
            _ => Err(Errno::EIO),
        }
    }

    /// One round of [`request`](Self::request): send what fits, take what
    /// arrived, wait if neither moved anything.
    fn request_step(
        &mut self,
        msg: &[u8],
        sent: &mut usize,
        req_id: u32,
    ) -> Result<Option<Message>, Errno> {
        let mut moved = false;
        if *sent < msg.len() {
            let n = self.send_some(&msg[*sent..])?;
            if n > 0 {
                *sent += n;
                moved = true;
                self.transport.notify()?;
            }
        }
        // A reply can only be ours once the whole request is out.
        let expect = (*sent == msg.len()).then_some(req_id);
        let (got, reply) = self.drain(expect)?;
        if reply.is_some() {
            return Ok(reply);
        }
        if !(moved || got) {
            self.check_page_error()?;
            self.transport.wait()?;
        }
        Ok(None)
    }

    /// Takes whatever arrived, without waiting; whether bytes moved.
    fn pump_events(&mut self) -> Result<bool, Errno> {
        if self.broken {
            return Err(Errno::EIO);
        }
        Ok(self.drain(None)?.0)
    }

    // ---- the operations ----------------------------------------------------

    /// Reads the value of `path`.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.read_tx(NO_TX, path)
    }

    /// Reads the value of `path` in transaction `tx`.
    pub fn read_tx(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, Errno> {
        self.request(XS_READ, tx, &arg(path)?)
    }

    /// Writes `value` to `path` (creating it and missing parents).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        self.write_tx(NO_TX, path, value)
    }

    /// Writes `value` to `path` in transaction `tx`.
    pub fn write_tx(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), Errno> {
        let mut p = arg(path)?;
        p.extend_from_slice(value);
        self.request(XS_WRITE, tx, &p).map(drop)
    }

    /// Creates `path` (empty) if it does not exist.
    pub fn mkdir(&mut self, path: &str) -> Result<(), Errno> {
        self.mkdir_tx(NO_TX, path)
    }

    /// Creates `path` in transaction `tx`.
    pub fn mkdir_tx(&mut self, tx: u32, path: &str) -> Result<(), Errno> {
        self.request(XS_MKDIR, tx, &arg(path)?).map(drop)
    }

    /// Removes `path` and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), Errno> {
        self.rm_tx(NO_TX, path)
    }

    /// Removes `path` in transaction `tx`.
    pub fn rm_tx(&mut self, tx: u32, path: &str) -> Result<(), Errno> {
        self.request(XS_RM, tx, &arg(path)?).map(drop)
    }

    /// The names of the children of `path`. A listing too long for one
    /// message is fetched in parts (`XS_DIRECTORY_PART`).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, Errno> {
        self.directory_tx(NO_TX, path)
    }

    /// The children of `path` in transaction `tx`.
    pub fn directory_tx(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Errno> {
        match self.request(XS_DIRECTORY, tx, &arg(path)?) {
            Ok(reply) => Ok(strings(&reply)
                .filter(|s| !s.is_empty())
                .map(text)
                .collect()),
            Err(Errno::E2BIG) => self.directory_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    /// Lists a long directory piece by piece, starting over if it changes
    /// meanwhile (its generation moves).
    fn directory_parts(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Errno> {
        'restart: for _ in 0..DIRECTORY_RESTARTS {
            let mut names = Vec::new();
            let mut generation: Option<Vec<u8>> = None;
            let mut offset = 0usize;
            loop {
                let mut p = arg(path)?;
                push_arg(&mut p, &format!("{offset}"))?;
                let reply = self.request(XS_DIRECTORY_PART, tx, &p)?;
                let Some(nul) = reply.iter().position(|&b| b == 0) else {
                    return Err(Errno::EIO);
                };
                let (generation_now, mut rest) = (&reply[..nul], &reply[nul + 1..]);
                match &generation {
                    Some(g) if g.as_slice() != generation_now => continue 'restart,
                    Some(_) => {}
                    None => generation = Some(generation_now.to_vec()),
                }
                let before = names.len();
                loop {
                    match rest.iter().position(|&b| b == 0) {
                        // An empty name ends the listing.
                        Some(0) => return Ok(names),
                        Some(n) => {
                            names.push(text(&rest[..n]));
                            offset += n + 1;
                            rest = &rest[n + 1..];
                        }
                        None if rest.is_empty() => break,
                        None => return Err(Errno::EIO),
                    }
                }
                if names.len() == before {
                    // No progress and no end marker: the store is not
                    // following the protocol.
                    return Err(Errno::EIO);
                }
            }
        }
        Err(Errno::EAGAIN)
    }

    /// The permissions of `path`, as the store spells them (`"n0"`, `"r5"`:
    /// owner and default first, then per-domain grants).
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<String>, Errno> {
        self.get_perms_tx(NO_TX, path)
    }

    /// The permissions of `path` in transaction `tx`.
    pub fn get_perms_tx(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Errno> {
        let reply = self.request(XS_GET_PERMS, tx, &arg(path)?)?;
        Ok(strings(&reply).map(text).collect())
    }

    /// Sets the permissions of `path` (strings as [`get_perms`](Self::get_perms)
    /// returns them).
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), Errno> {
        self.set_perms_tx(NO_TX, path, perms)
    }

    /// Sets the permissions of `path` in transaction `tx`.
    pub fn set_perms_tx(&mut self, tx: u32, path: &str, perms: &[&str]) -> Result<(), Errno> {
        let mut p = arg(path)?;
        for perm in perms {
            push_arg(&mut p, perm)?;
        }
        self.request(XS_SET_PERMS, tx, &p).map(drop)
    }

    /// Watches `path` and everything below it; events carry `token`. The
    /// store fires every new watch once straight away.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        let mut p = arg(path)?;
        push_arg(&mut p, token)?;
        self.request(XS_WATCH, NO_TX, &p).map(drop)
    }

    /// Removes the watch on `path` with `token`, and drops its queued events.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        let mut p = arg(path)?;
        push_arg(&mut p, token)?;
        self.request(XS_UNWATCH, NO_TX, &p)?;
        // The store removed the watch before replying, and the stream is in
        // order: nothing more for it can follow.
        self.events.retain(|e| e.token != token);
        Ok(())
    }

    /// Starts a transaction; returns its id.
    pub fn transaction_start(&mut self) -> Result<u32, Errno> {
        let reply = self.request(XS_TRANSACTION_START, NO_TX, b"\0")?;
        let id = core::str::from_utf8(one_string(&reply))
            .ok()
            .and_then(|s| s.parse::<u32>().ok());
        match id {
            Some(id) if id != NO_TX => Ok(id),
            _ => Err(Errno::EIO),
        }
    }

    /// Ends transaction `tx`, committing it if `commit`. A commit fails with
    /// `EAGAIN` when something the transaction used changed meanwhile: start
    /// over.
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), Errno> {
        let p: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(XS_TRANSACTION_END, tx, p).map(drop)
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    pub fn get_domain_path(&mut self, domid: guest_abi::types::DomId) -> Result<String, Errno> {
        let reply = self.request(XS_GET_DOMAIN_PATH, NO_TX, &arg(&format!("{}", domid.0))?)?;
        Ok(text(one_string(&reply)))
    }

    // ---- watch events ------------------------------------------------------

    /// The oldest watch event, blocking until one arrives.
    pub fn next_watch_event(&mut self) -> Result<WatchEvent, Errno> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if !self.pump_events()? && self.events.is_empty() {
                self.check_page_error()?;
                self.transport.wait()?;
            }
        }
    }

    /// The oldest watch event if one has arrived; never blocks.
    pub fn poll_watch_event(&mut self) -> Result<Option<WatchEvent>, Errno> {
        if self.events.is_empty() {
            self.pump_events()?;
        }
        Ok(self.events.pop_front())
    }

    /// The oldest event for `token`, blocking until one arrives. Events for
    /// other tokens stay queued, in order.
    pub fn wait_watch_event(&mut self, token: &str) -> Result<WatchEvent, Errno> {
        loop {
            if let Some(i) = self.events.iter().position(|e| e.token == token)
                && let Some(e) = self.events.remove(i)
            {
                return Ok(e);
            }
            if !self.pump_events()? {
                self.check_page_error()?;
                self.transport.wait()?;
            }
        }
    }
}

// ---- kernel glue -----------------------------------------------------------

/// The store ring page as this guest maps it: volatile accesses to a live
/// mapping, with x86 barriers.
pub struct MappedRing {
    base: *mut u8,
}

impl MappedRing {
    /// The ring page at virtual address `va`.
    ///
    /// # Safety
    /// `va` must be the page-aligned address of a writable mapping of the
    /// store ring page that stays mapped for the lifetime of the value, and
    /// nothing else in this guest may access that page meanwhile (the store
    /// does, concurrently: hence volatile accesses only).
    pub unsafe fn new(va: u64) -> Self {
        Self {
            base: va as *mut u8,
        }
    }

    fn ring_ptr(&self, ring: usize, off: usize, len: usize) -> *mut u8 {
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= XENSTORE_RING_SIZE),
            "ring range out of bounds"
        );
        self.base.wrapping_add(ring + off)
    }
}

impl RingPage for MappedRing {
    fn load(&self, field: Field) -> u32 {
        // SAFETY: per `new`, `base` maps the whole ring page; every field
        // offset is inside it and 4-byte aligned (the page is page aligned).
        unsafe { core::ptr::read_volatile(self.base.add(field.offset()) as *const u32) }
    }

    fn store(&self, field: Field, value: u32) {
        // SAFETY: as for `load`; the mapping is writable.
        unsafe { core::ptr::write_volatile(self.base.add(field.offset()) as *mut u32, value) }
    }

    fn write_req(&self, off: usize, data: &[u8]) {
        let p = self.ring_ptr(REQ_RING_OFFSET, off, data.len());
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: `ring_ptr` checked that the range lies inside the
            // request ring, which lies inside the mapped, writable page.
            unsafe { core::ptr::write_volatile(p.add(i), b) };
        }
    }

    fn read_rsp(&self, off: usize, out: &mut [u8]) {
        let p = self.ring_ptr(RSP_RING_OFFSET, off, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `ring_ptr` checked that the range lies inside the reply
            // ring, which lies inside the mapped page.
            *b = unsafe { core::ptr::read_volatile(p.add(i)) };
        }
    }

    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn read_fence(&self) {
        // x86 does not reorder loads with other loads.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn write_fence(&self) {
        // x86 does not reorder stores with other stores.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// The store event channel of this guest. The port is kept masked: waiting
/// polls it with `SCHEDOP_poll`, which needs no upcall handler and cannot
/// miss an event (the pending bit stays set until [`Transport::wait`] clears
/// it, which it does before the client looks at the rings again).
pub struct StoreEvents {
    port: guest_abi::types::Port,
}

impl StoreEvents {
    /// Uses `port` (already bound, as `start_info.store_evtchn` is) for the
    /// store: masks it, so that event upcalls leave its pending bit alone.
    /// Needs the shared info page mapped (`events::init` or
    /// `arch::shared::map`).
    pub fn new(port: guest_abi::types::Port) -> Self {
        crate::events::mask(port);
        Self { port }
    }

    /// The port.
    pub fn port(&self) -> guest_abi::types::Port {
        self.port
    }
}

impl Transport for StoreEvents {
    fn notify(&mut self) -> Result<(), Errno> {
        crate::events::send(self.port)
    }

    fn wait(&mut self) -> Result<(), Errno> {
        if !crate::events::is_pending(self.port) {
            // Returns once the port is pending (or an upcall is deliverable:
            // a spurious wake-up the client tolerates).
            guest_abi::hypercall::sched_poll(&[self.port], 0)?;
        }
        crate::events::clear(self.port);
        Ok(())
    }
}

/// The client the kernel glue builds.
pub type KernelClient = Client<MappedRing, StoreEvents>;

/// Builds the client for this guest's store ring: `si.store_mfn` is one of
/// the domain's own pages, so the builder mapped it in the bootstrap region at
/// its pseudo-physical address (as [`crate::mm`] reads page-table frames);
/// the mapping is checked before use. Maps shared info if needed and masks
/// `si.store_evtchn` (see [`StoreEvents`]). `ENOENT` without a store,
/// `EFAULT` if the page is not where the layout puts it.
pub fn from_start_info(si: &guest_abi::start_info::StartInfo) -> Result<KernelClient, Errno> {
    if si.store_mfn == 0 || si.store_evtchn == 0 {
        return Err(Errno::ENOENT);
    }
    let pfn = crate::mm::mfn_to_pfn(si.store_mfn);
    if pfn >= si.nr_pages || crate::mm::pfn_to_mfn(pfn) != si.store_mfn {
        return Err(Errno::EFAULT);
    }
    let va = pfn * 4096;
    let pte = crate::mm::lookup(va);
    let mapped_rw = crate::mm::PteFlags::PRESENT | crate::mm::PteFlags::RW;
    if !crate::mm::PteFlags::from_entry(pte).contains(mapped_rw)
        || (pte & guest_abi::arch::pte::ADDR_MASK) >> 12 != si.store_mfn
    {
        return Err(Errno::EFAULT);
    }
    crate::arch::shared::map(si.shared_info)?;
    let events = StoreEvents::new(guest_abi::types::Port(si.store_evtchn));
    // SAFETY: `va` was just checked to map the store frame writable. That
    // bootstrap mapping is never removed by this library (the heap and page
    // pool use other pages), and this library touches the store page only
    // through the client built here.
    let page = unsafe { MappedRing::new(va) };
    Ok(Client::new(page, events))
}

/// [`from_start_info`] for this guest's start_info.
pub fn connect() -> Result<KernelClient, Errno> {
    from_start_info(crate::rt::start_info())
}

/// A simulated store for host tests: the real service core
/// (`backends/xenstore`) behind an in-memory ring page, pumped from the
/// client's [`Transport`] hooks, plus a scripted (hostile) store.
#[cfg(test)]
pub(crate) mod sim {
    use super::*;
    use ::xenstore::{ConnId, Xenstore};
    use alloc::boxed::Box;
    use alloc::rc::Rc;
    use core::cell::RefCell;
    use guest_abi::types::DomId;

    /// A ring page in plain memory.
    pub(crate) struct MemPage(pub RefCell<XenstoreDomainInterface>);

    impl MemPage {
        /// A zeroed page with all four indices at `start`.
        pub(crate) fn new(start: u32) -> Rc<Self> {
            let mut p = XenstoreDomainInterface::default();
            (p.req_cons, p.req_prod, p.rsp_cons, p.rsp_prod) = (start, start, start, start);
            Rc::new(Self(RefCell::new(p)))
        }

        /// Appends `bytes` to the reply ring as the store would (no checks).
        pub(crate) fn push_rsp(&self, bytes: &[u8]) {
            let mut p = self.0.borrow_mut();
            for &b in bytes {
                let slot = (p.rsp_prod % RING) as usize;
                p.rsp[slot] = b;
                p.rsp_prod = p.rsp_prod.wrapping_add(1);
            }
        }

        /// Takes every request byte as the store would.
        pub(crate) fn take_req(&self) -> Vec<u8> {
            let mut p = self.0.borrow_mut();
            let mut out = Vec::new();
            while p.req_cons != p.req_prod && out.len() < XENSTORE_RING_SIZE {
                out.push(p.req[(p.req_cons % RING) as usize]);
                p.req_cons = p.req_cons.wrapping_add(1);
            }
            out
        }
    }

    impl RingPage for MemPage {
        fn load(&self, field: Field) -> u32 {
            let p = self.0.borrow();
            let o = field.offset();
            u32::from_ne_bytes(p.as_bytes()[o..o + 4].try_into().unwrap())
        }
        fn store(&self, field: Field, value: u32) {
            let o = field.offset();
            self.0.borrow_mut().as_mut_bytes()[o..o + 4].copy_from_slice(&value.to_ne_bytes());
        }
        fn write_req(&self, off: usize, data: &[u8]) {
            self.0.borrow_mut().req[off..off + data.len()].copy_from_slice(data);
        }
        fn read_rsp(&self, off: usize, out: &mut [u8]) {
            out.copy_from_slice(&self.0.borrow().rsp[off..off + out.len()]);
        }
        fn fence(&self) {}
    }

    /// The page shared by the client and the simulated store.
    #[derive(Clone)]
    pub(crate) struct Shared(pub Rc<MemPage>);

    impl RingPage for Shared {
        fn load(&self, field: Field) -> u32 {
            self.0.load(field)
        }
        fn store(&self, field: Field, value: u32) {
            self.0.store(field, value);
        }
        fn write_req(&self, off: usize, data: &[u8]) {
            self.0.write_req(off, data);
        }
        fn read_rsp(&self, off: usize, out: &mut [u8]) {
            self.0.read_rsp(off, out);
        }
        fn fence(&self) {}
    }

    /// Something the test does to the store.
    pub(crate) type Step = Box<dyn FnOnce(&mut Server)>;
    /// Runs before the store handles request bytes; returns whether to stay.
    pub(crate) type Hook = Box<dyn FnMut(&mut Server, &[u8]) -> bool>;

    /// The simulated store.
    pub(crate) struct Server {
        pub xs: Xenstore,
        /// The client's connection.
        pub conn: ConnId,
        /// A privileged connection for the test's own changes.
        pub admin: ConnId,
        pub page: Rc<MemPage>,
        /// Most bytes moved each way per pump.
        pub chunk: usize,
        /// Whether the store runs on every notify (else only on wait).
        pub eager: bool,
        /// One is run each time the client waits and nothing moves.
        pub idle_steps: VecDeque<Step>,
        /// Run with each batch of request bytes, before the store sees them.
        pub before_receive: Option<Hook>,
        pub waits: usize,
        pub notifies: usize,
    }

    impl Server {
        /// Moves bytes both ways (at most `chunk` each); whether any moved.
        pub(crate) fn pump(&mut self) -> bool {
            let mut moved = false;
            let mut req = Vec::new();
            {
                let mut p = self.page.0.borrow_mut();
                while p.req_cons != p.req_prod && req.len() < self.chunk {
                    req.push(p.req[(p.req_cons % RING) as usize]);
                    p.req_cons = p.req_cons.wrapping_add(1);
                }
            }
            if !req.is_empty() {
                moved = true;
                if let Some(mut hook) = self.before_receive.take()
                    && hook(self, &req)
                {
                    self.before_receive = Some(hook);
                }
                self.xs
                    .receive(self.conn, &req)
                    .expect("the client frames its requests");
            }
            let mut budget = self.chunk;
            while budget > 0 {
                let Some(out) = self.xs.peek_output(self.conn) else {
                    break;
                };
                let mut p = self.page.0.borrow_mut();
                let free = (RING - p.rsp_prod.wrapping_sub(p.rsp_cons)) as usize;
                let n = free.min(out.len()).min(budget);
                if n == 0 {
                    break;
                }
                for &b in &out[..n] {
                    let slot = (p.rsp_prod % RING) as usize;
                    p.rsp[slot] = b;
                    p.rsp_prod = p.rsp_prod.wrapping_add(1);
                }
                drop(p);
                self.xs.advance_output(self.conn, n);
                budget -= n;
                moved = true;
            }
            moved
        }

        /// Runs a request on the admin connection; returns its reply payload.
        pub(crate) fn admin(&mut self, ty: u32, tx: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
            let h = XsdSockmsg {
                type_: ty,
                req_id: 0x5151,
                tx_id: tx,
                len: payload.len() as u32,
            };
            let mut msg = h.as_bytes().to_vec();
            msg.extend_from_slice(payload);
            self.xs.handle(self.admin, &msg).expect("well framed");
            while let Some(out) = self.xs.pop_output(self.admin) {
                let (h, p) = XsdSockmsg::read_from_prefix(&out).unwrap();
                if h.type_ == XS_WATCH_EVENT {
                    continue;
                }
                return if h.type_ == XS_ERROR {
                    Err(parse_error(p).unwrap())
                } else {
                    Ok(p.to_vec())
                };
            }
            panic!("no reply on the admin connection")
        }

        /// Writes `value` at `path` as dom0.
        pub(crate) fn admin_write(&mut self, path: &str, value: &str) {
            let mut p = arg(path).unwrap();
            p.extend_from_slice(value.as_bytes());
            self.admin(XS_WRITE, NO_TX, &p).unwrap();
        }

        /// Sets permissions of `path` as dom0.
        pub(crate) fn admin_set_perms(&mut self, path: &str, perms: &[&str]) {
            let mut p = arg(path).unwrap();
            for perm in perms {
                push_arg(&mut p, perm).unwrap();
            }
            self.admin(XS_SET_PERMS, NO_TX, &p).unwrap();
        }

        /// Removes `path` as dom0.
        pub(crate) fn admin_rm(&mut self, path: &str) {
            self.admin(XS_RM, NO_TX, &arg(path).unwrap()).unwrap();
        }
    }

    /// The client's event channel to the simulated store.
    pub(crate) struct SimTransport(pub Rc<RefCell<Server>>);

    impl Transport for SimTransport {
        fn notify(&mut self) -> Result<(), Errno> {
            let mut s = self.0.borrow_mut();
            s.notifies += 1;
            if s.eager {
                s.pump();
            }
            Ok(())
        }

        fn wait(&mut self) -> Result<(), Errno> {
            let mut s = self.0.borrow_mut();
            s.waits += 1;
            if s.pump() {
                return Ok(());
            }
            // Idle: let the test act, as another domain would meanwhile.
            let Some(step) = s.idle_steps.pop_front() else {
                return Err(Errno::ETIMEDOUT);
            };
            step(&mut s);
            s.pump();
            Ok(())
        }
    }

    /// A client on the simulated store.
    pub(crate) type SimClient = Client<Shared, SimTransport>;

    /// How to set the simulation up.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Config {
        pub domid: u16,
        pub privileged: bool,
        pub chunk: usize,
        pub eager: bool,
        /// Initial value of all four ring indices.
        pub start: u32,
    }

    impl Default for Config {
        fn default() -> Self {
            Self {
                domid: 1,
                privileged: false,
                chunk: 4096,
                eager: true,
                start: 0,
            }
        }
    }

    /// Configurations every functional test runs under: an eager store, one
    /// moving a byte at a time, one needing waits and odd piece sizes, and
    /// indices about to wrap.
    pub(crate) const CONFIGS: &[Config] = &[
        Config {
            domid: 1,
            privileged: false,
            chunk: 4096,
            eager: true,
            start: 0,
        },
        Config {
            domid: 1,
            privileged: false,
            chunk: 1,
            eager: false,
            start: 0,
        },
        Config {
            domid: 1,
            privileged: false,
            chunk: 7,
            eager: false,
            start: 0xffff_fc05,
        },
        Config {
            domid: 1,
            privileged: false,
            chunk: 700,
            eager: true,
            start: u32::MAX - 3,
        },
    ];

    /// A client of domain `c.domid` (home created, owned by it) on a fresh
    /// store, and the store.
    pub(crate) fn client(c: Config) -> (SimClient, Rc<RefCell<Server>>) {
        // Room for values as long as a message allows, even unprivileged.
        let mut xs = Xenstore::with_limits(::xenstore::Limits {
            node_size: 2 * XENSTORE_PAYLOAD_MAX,
            ..Default::default()
        });
        let conn = xs.connect(DomId(c.domid), c.privileged);
        let admin = xs.connect(DomId(0), true);
        if c.domid != 0 {
            xs.create_home(DomId(c.domid)).unwrap();
        }
        let page = MemPage::new(c.start);
        let server = Rc::new(RefCell::new(Server {
            xs,
            conn,
            admin,
            page: page.clone(),
            chunk: c.chunk,
            eager: c.eager,
            idle_steps: VecDeque::new(),
            before_receive: None,
            waits: 0,
            notifies: 0,
        }));
        (
            Client::new(Shared(page), SimTransport(server.clone())),
            server,
        )
    }

    /// One action of a scripted store.
    pub(crate) type Action = Box<dyn FnOnce(&MemPage)>;

    /// A store that runs one scripted action per wait (and nothing on
    /// notify), then times out.
    pub(crate) struct Scripted {
        pub page: Rc<MemPage>,
        pub script: VecDeque<Action>,
    }

    impl Transport for Scripted {
        fn notify(&mut self) -> Result<(), Errno> {
            Ok(())
        }
        fn wait(&mut self) -> Result<(), Errno> {
            let step = self.script.pop_front().ok_or(Errno::ETIMEDOUT)?;
            step(&self.page);
            Ok(())
        }
    }

    /// A client on a scripted store.
    pub(crate) fn scripted(script: Vec<Action>) -> (Client<Shared, Scripted>, Rc<MemPage>) {
        let page = MemPage::new(0);
        let t = Scripted {
            page: page.clone(),
            script: script.into(),
        };
        (Client::new(Shared(page.clone()), t), page)
    }

    /// A whole message.
    pub(crate) fn message(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let h = XsdSockmsg {
            type_: ty,
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        };
        let mut m = h.as_bytes().to_vec();
        m.extend_from_slice(payload);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::sim::{self, CONFIGS, Config, MemPage, message};
    use super::*;
    use alloc::boxed::Box;
    use alloc::string::ToString;
    use alloc::vec;
    use guest_abi::io::xenstore::XENSTORE_ERROR_PROTO;

    fn ev(path: &str, token: &str) -> WatchEvent {
        WatchEvent {
            path: path.to_string(),
            token: token.to_string(),
        }
    }

    #[test]
    fn strings_split_like_the_store() {
        let all = |p: &[u8]| strings(p).map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert!(all(b"").is_empty());
        assert_eq!(all(b"\0"), vec![b"".to_vec()]);
        assert_eq!(all(b"a\0bc\0"), vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(all(b"a\0tail"), vec![b"a".to_vec()]);
        assert!(all(b"no nul").is_empty());
    }

    #[test]
    fn every_operation() {
        for &c in CONFIGS {
            let (mut xs, _srv) = sim::client(c);
            assert_eq!(
                xs.get_domain_path(guest_abi::types::DomId(1)).unwrap(),
                "/local/domain/1",
                "{c:?}"
            );
            assert_eq!(
                xs.get_domain_path(guest_abi::types::DomId(7)).unwrap(),
                "/local/domain/7"
            );

            xs.write("a", b"1").unwrap();
            assert_eq!(xs.read("a").unwrap(), b"1");
            assert_eq!(xs.read("/local/domain/1/a").unwrap(), b"1");
            xs.write("bin", b"x\0y\0").unwrap();
            assert_eq!(xs.read("bin").unwrap(), b"x\0y\0");
            xs.write("empty", b"").unwrap();
            assert_eq!(xs.read("empty").unwrap(), b"");

            xs.mkdir("d").unwrap();
            assert_eq!(xs.read("d").unwrap(), b"");
            assert!(xs.directory("d").unwrap().is_empty());
            xs.write("d/x", b"").unwrap();
            xs.write("d/y/z", b"deep").unwrap();
            let mut names = xs.directory("d").unwrap();
            names.sort();
            assert_eq!(names, ["x", "y"]);
            xs.rm("d").unwrap();
            assert_eq!(xs.read("d/y/z"), Err(Errno::ENOENT));
            assert_eq!(xs.directory("d"), Err(Errno::ENOENT));

            assert_eq!(xs.get_perms("a").unwrap(), ["n1"]);
            xs.set_perms("a", &["n1", "r0", "b2"]).unwrap();
            assert_eq!(xs.get_perms("a").unwrap(), ["n1", "r0", "b2"]);

            // A transaction: invisible until committed.
            let tx = xs.transaction_start().unwrap();
            assert_ne!(tx, NO_TX);
            xs.write_tx(tx, "t/v", b"in tx").unwrap();
            xs.mkdir_tx(tx, "t/dir").unwrap();
            xs.rm_tx(tx, "a").unwrap();
            xs.set_perms_tx(tx, "t/v", &["n1", "r3"]).unwrap();
            assert_eq!(xs.read("t/v"), Err(Errno::ENOENT));
            assert_eq!(xs.read("a").unwrap(), b"1");
            assert_eq!(xs.read_tx(tx, "t/v").unwrap(), b"in tx");
            assert_eq!(xs.read_tx(tx, "a"), Err(Errno::ENOENT));
            let mut names = xs.directory_tx(tx, "t").unwrap();
            names.sort();
            assert_eq!(names, ["dir", "v"]);
            assert_eq!(xs.get_perms_tx(tx, "t/v").unwrap(), ["n1", "r3"]);
            xs.transaction_end(tx, true).unwrap();
            assert_eq!(xs.read("t/v").unwrap(), b"in tx");
            assert_eq!(xs.read("a"), Err(Errno::ENOENT));

            // An aborted one leaves nothing behind.
            let tx = xs.transaction_start().unwrap();
            xs.write_tx(tx, "t/v", b"dropped").unwrap();
            xs.transaction_end(tx, false).unwrap();
            assert_eq!(xs.read("t/v").unwrap(), b"in tx");
            assert_eq!(xs.transaction_end(tx, true), Err(Errno::ENOENT));

            // Watches: the initial event, then one per change.
            xs.watch("t", "tok").unwrap();
            xs.write("t/v", b"2").unwrap();
            assert_eq!(xs.next_watch_event().unwrap(), ev("t", "tok"));
            assert_eq!(xs.next_watch_event().unwrap(), ev("t/v", "tok"));
            assert_eq!(xs.poll_watch_event().unwrap(), None);
            xs.unwatch("t", "tok").unwrap();
            xs.write("t/v", b"3").unwrap();
            assert_eq!(xs.poll_watch_event().unwrap(), None);
            assert!(!xs.is_broken());
        }
    }

    #[test]
    fn errors_map_to_errno() {
        let (mut xs, srv) = sim::client(Config::default());
        assert_eq!(xs.read("missing"), Err(Errno::ENOENT));
        // Removing what is not there is fine if its parent exists.
        xs.rm("missing").unwrap();
        assert_eq!(xs.rm("nodir/missing"), Err(Errno::ENOENT));
        // Outside its home an unprivileged domain may not even learn what
        // exists.
        assert_eq!(xs.read("/local/domain/0/secret"), Err(Errno::EACCES));
        assert_eq!(xs.write("/top", b"x"), Err(Errno::EACCES));
        srv.borrow_mut().admin_write("/local/domain/0/secret", "s");
        assert_eq!(xs.read("/local/domain/0/secret"), Err(Errno::EACCES));
        srv.borrow_mut()
            .admin_set_perms("/local/domain/0/secret", &["n0", "r1"]);
        assert_eq!(xs.read("/local/domain/0/secret").unwrap(), b"s");
        assert_eq!(xs.write("/local/domain/0/secret", b"t"), Err(Errno::EACCES));
        assert_eq!(xs.unwatch("nowatch", "tok"), Err(Errno::ENOENT));
        xs.watch("w", "tok").unwrap();
        assert_eq!(xs.watch("w", "tok"), Err(Errno::EEXIST));
        assert_eq!(xs.transaction_end(99, true), Err(Errno::ENOENT));
        assert_eq!(xs.read_tx(99, "w"), Err(Errno::ENOENT));
        assert_eq!(xs.read("bad\0path"), Err(Errno::EINVAL));
        assert_eq!(xs.watch("w", "bad\0token"), Err(Errno::EINVAL));
        assert_eq!(xs.set_perms("w", &["n1\0r2"]), Err(Errno::EINVAL));
        // Too long for one message: refused before anything is sent.
        let before = srv.borrow().page.load(Field::ReqProd);
        assert_eq!(
            xs.write("big", &[b'v'; XENSTORE_PAYLOAD_MAX - 3]),
            Err(Errno::E2BIG)
        );
        assert_eq!(srv.borrow().page.load(Field::ReqProd), before);
        assert!(!xs.is_broken());
        xs.write("w", b"still fine").unwrap();
        assert_eq!(xs.read("w").unwrap(), b"still fine");
    }

    #[test]
    fn transaction_conflict_gives_eagain_then_retry_commits() {
        for &c in CONFIGS {
            let (mut xs, srv) = sim::client(c);
            xs.write("counter", b"1").unwrap();
            let tx = xs.transaction_start().unwrap();
            assert_eq!(xs.read_tx(tx, "counter").unwrap(), b"1");
            // Another domain changes what the transaction read.
            srv.borrow_mut().admin_write("/local/domain/1/counter", "5");
            xs.write_tx(tx, "counter", b"2").unwrap();
            assert_eq!(xs.transaction_end(tx, true), Err(Errno::EAGAIN));
            assert_eq!(xs.read("counter").unwrap(), b"5");
            let tx = xs.transaction_start().unwrap();
            let v = xs.read_tx(tx, "counter").unwrap();
            assert_eq!(v, b"5");
            xs.write_tx(tx, "counter", b"6").unwrap();
            xs.transaction_end(tx, true).unwrap();
            assert_eq!(xs.read("counter").unwrap(), b"6");
        }
    }

    #[test]
    fn watch_events_interleave_with_replies() {
        for &c in CONFIGS {
            let (mut xs, srv) = sim::client(c);
            xs.write("other", b"o").unwrap();
            xs.watch("w", "A").unwrap();
            xs.watch("/local/domain/1/v", "B").unwrap();
            // A change lands while the next request is in flight: its event
            // is on the ring ahead of the reply.
            srv.borrow_mut().before_receive = Some(Box::new(|s, _| {
                s.admin_write("/local/domain/1/w/x", "1");
                s.admin_write("/local/domain/1/v/sub", "2");
                false
            }));
            assert_eq!(xs.read("other").unwrap(), b"o", "{c:?}");
            assert_eq!(xs.queued_watch_events(), 4);
            // Waiting for one token leaves the other's events queued in order.
            assert_eq!(
                xs.wait_watch_event("B").unwrap(),
                ev("/local/domain/1/v", "B")
            );
            assert_eq!(xs.poll_watch_event().unwrap(), Some(ev("w", "A")));
            assert_eq!(xs.next_watch_event().unwrap(), ev("w/x", "A"));
            assert_eq!(
                xs.next_watch_event().unwrap(),
                ev("/local/domain/1/v/sub", "B")
            );
            assert_eq!(xs.poll_watch_event().unwrap(), None);

            // Events arriving while a long request is still being streamed.
            let value = vec![b'q'; 3000];
            srv.borrow_mut().before_receive = Some(Box::new(|s, _| {
                s.admin_write("/local/domain/1/w/y", "3");
                false
            }));
            xs.write("long", &value).unwrap();
            assert_eq!(xs.read("long").unwrap(), value);
            assert_eq!(xs.next_watch_event().unwrap(), ev("w/y", "A"));

            // Blocking for an event another domain causes later.
            srv.borrow_mut()
                .idle_steps
                .push_back(Box::new(|s| s.admin_rm("/local/domain/1/w/x")));
            assert_eq!(xs.next_watch_event().unwrap(), ev("w/x", "A"));
            srv.borrow_mut()
                .idle_steps
                .push_back(Box::new(|s| s.admin_write("/local/domain/1/v", "9")));
            assert_eq!(
                xs.wait_watch_event("B").unwrap(),
                ev("/local/domain/1/v", "B")
            );
            // Nothing more comes: the simulated channel gives up, the client
            // reports it.
            assert_eq!(xs.next_watch_event(), Err(Errno::ETIMEDOUT));

            // Unwatching drops that watch's queued events only.
            xs.watch("u", "U").unwrap();
            srv.borrow_mut().admin_write("/local/domain/1/w/z", "1");
            xs.read("other").unwrap();
            assert_eq!(xs.queued_watch_events(), 2);
            xs.unwatch("u", "U").unwrap();
            assert_eq!(xs.next_watch_event().unwrap(), ev("w/z", "A"));
            assert_eq!(xs.poll_watch_event().unwrap(), None);
            assert!(!xs.is_broken());
        }
    }

    #[test]
    fn messages_longer_than_the_ring() {
        for &c in CONFIGS {
            let (mut xs, srv) = sim::client(c);
            // The largest request: "path\0" plus value = 4096 bytes.
            let value: Vec<u8> = (0..XENSTORE_PAYLOAD_MAX - 4)
                .map(|i| (i % 251) as u8)
                .collect();
            xs.write("big", &value).unwrap();
            assert_eq!(xs.read("big").unwrap(), value);
            let waits = srv.borrow().waits;
            // Several round trips through a full ring, and no index left
            // behind.
            assert_eq!(xs.read("big").unwrap(), value);
            assert!(c.eager || srv.borrow().waits > waits + 4);
            let p = srv.borrow().page.clone();
            assert_eq!(p.load(Field::ReqCons), p.load(Field::ReqProd));
            assert_eq!(p.load(Field::RspCons), p.load(Field::RspProd));
        }
    }

    #[test]
    fn long_directory_comes_in_parts() {
        for &c in CONFIGS {
            let cfg = Config {
                domid: 0,
                privileged: true,
                ..c
            };
            let (mut xs, srv) = sim::client(cfg);
            let mut want: Vec<String> = (0..300)
                .map(|i| format!("a-rather-long-child-name-{i:04}"))
                .collect();
            for n in &want {
                srv.borrow_mut().admin_write(&format!("/big/{n}"), "");
            }
            // Someone adds a child after the first part: the listing starts
            // over and includes it.
            let (mut seen, mut stream) = (0, Vec::new());
            srv.borrow_mut().before_receive = Some(Box::new(move |s, bytes| {
                // Reassemble the requests: act just before the second part
                // request reaches the store.
                stream.extend_from_slice(bytes);
                while let Ok((h, rest)) = XsdSockmsg::read_from_prefix(&stream) {
                    if rest.len() < h.len as usize {
                        break;
                    }
                    stream.drain(..HEADER + h.len as usize);
                    if h.type_ == XS_DIRECTORY_PART {
                        seen += 1;
                        if seen == 2 {
                            s.admin_write("/big/zz-late", "");
                            return false;
                        }
                    }
                }
                true
            }));
            let mut got = xs.directory("/big").unwrap();
            got.sort();
            want.push("zz-late".into());
            want.sort();
            assert!(got == want, "{c:?}: {} names", got.len());
            assert!(
                srv.borrow().before_receive.is_none(),
                "the listing restarted"
            );
        }
    }

    // ---- a hostile store ---------------------------------------------------

    fn script(steps: Vec<sim::Action>) -> (Client<sim::Shared, sim::Scripted>, Rc<MemPage>) {
        sim::scripted(steps)
    }
    use alloc::rc::Rc;

    #[test]
    fn oversized_header_is_a_protocol_error() {
        let (mut xs, _p) = script(vec![Box::new(|p| {
            let h = XsdSockmsg {
                type_: XS_READ,
                req_id: 1,
                tx_id: 0,
                len: XENSTORE_PAYLOAD_MAX as u32 + 1,
            };
            p.push_rsp(h.as_bytes());
            p.push_rsp(&[0; 100]);
        })]);
        assert_eq!(xs.read("x"), Err(Errno::EIO));
        assert!(xs.is_broken());
        assert_eq!(xs.read("x"), Err(Errno::EIO));
        assert_eq!(xs.next_watch_event(), Err(Errno::EIO));
        assert_eq!(xs.poll_watch_event(), Err(Errno::EIO));
    }

    #[test]
    fn indices_far_apart_are_a_protocol_error() {
        // Reply producer far ahead of the consumer.
        let (mut xs, _p) = script(vec![Box::new(|p| {
            let mut i = p.0.borrow_mut();
            i.rsp_prod = i.rsp_cons.wrapping_add(RING + 1);
        })]);
        assert_eq!(xs.read("x"), Err(Errno::EIO));
        assert!(xs.is_broken());
        // ... or behind it.
        let (mut xs, _p) = script(vec![Box::new(|p| {
            let mut i = p.0.borrow_mut();
            i.rsp_prod = i.rsp_cons.wrapping_sub(1);
        })]);
        assert_eq!(xs.read("x"), Err(Errno::EIO));
        // Request consumer ahead of what was produced.
        let (mut xs, p) = script(vec![]);
        {
            let mut i = p.0.borrow_mut();
            i.req_cons = i.req_prod.wrapping_add(50);
        }
        assert_eq!(xs.read("x"), Err(Errno::EIO));
        assert!(xs.is_broken());
        // The store flagging an error in the page.
        let (mut xs, p) = script(vec![]);
        p.store(Field::ServerFeatures, XENSTORE_SERVER_FEATURE_ERROR);
        p.store(Field::Error, XENSTORE_ERROR_PROTO);
        assert_eq!(xs.read("x"), Err(Errno::EIO));
    }

    #[test]
    fn odd_replies_are_errors_or_ignored() {
        let (mut xs, _p) = script(vec![
            Box::new(|p| {
                p.take_req();
                // A reply to someone else, a malformed event, an unknown
                // error name: only the last one is for us.
                p.push_rsp(&message(XS_READ, 77, b"not yours"));
                p.push_rsp(&message(XS_WATCH_EVENT, 0, b"no token"));
                p.push_rsp(&message(XS_ERROR, 1, b"EWHATEVER\0"));
            }),
            Box::new(|p| {
                p.take_req();
                p.push_rsp(&message(XS_WRITE, 2, b"OK\0"));
            }),
            Box::new(|p| {
                p.take_req();
                p.push_rsp(&message(XS_TRANSACTION_START, 3, b"zero\0"));
            }),
            Box::new(|p| {
                p.take_req();
                p.push_rsp(&message(XS_ERROR, 4, b"EAGAIN\0"));
            }),
            Box::new(|p| {
                p.take_req();
                p.push_rsp(&message(XS_WATCH_EVENT, 0, b"p\0t\0"));
                // A header arriving in two pieces.
                let m = message(XS_READ, 5, b"v");
                p.push_rsp(&m[..9]);
            }),
            Box::new(|p| p.push_rsp(&message(XS_READ, 5, b"v")[9..])),
        ]);
        assert_eq!(xs.read("x"), Err(Errno::EIO));
        assert!(!xs.is_broken());
        assert_eq!(xs.read("x"), Err(Errno::EIO), "wrong reply type");
        assert_eq!(xs.transaction_start(), Err(Errno::EIO));
        assert_eq!(xs.write("x", b""), Err(Errno::EAGAIN));
        assert_eq!(xs.read("x").unwrap(), b"v");
        assert_eq!(xs.poll_watch_event().unwrap(), Some(ev("p", "t")));
        // A store that never answers: the transport's error, no panic.
        assert_eq!(xs.read("x"), Err(Errno::ETIMEDOUT));
        assert!(!xs.is_broken());
    }

    #[test]
    fn request_cut_short_breaks_the_client() {
        // Nobody consumes requests: a long one cannot be sent whole.
        let (mut xs, _p) = script(vec![]);
        assert_eq!(xs.write("x", &[1; 2000]), Err(Errno::ETIMEDOUT));
        assert!(xs.is_broken());
        assert_eq!(xs.read("x"), Err(Errno::EIO));
    }

    #[test]
    fn hostile_store_fuzz_never_panics() {
        // Deterministic garbage in the reply ring and indices.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut steps: Vec<sim::Action> = Vec::new();
            for _ in 0..4 {
                let r = next();
                let bytes: Vec<u8> = (0..(r % 64) as usize)
                    .map(|i| (r >> (i % 8 * 8)) as u8)
                    .collect();
                let r2 = next();
                steps.push(Box::new(move |p| {
                    p.take_req();
                    if r2 % 5 == 0 {
                        let h = XsdSockmsg {
                            type_: (r2 >> 8) as u32 % 24,
                            req_id: 1,
                            tx_id: 0,
                            len: (r2 >> 40) as u32 % 5000,
                        };
                        p.push_rsp(h.as_bytes());
                    }
                    p.push_rsp(&bytes);
                    if r2 % 7 == 0 {
                        p.0.borrow_mut().rsp_prod = (r2 >> 16) as u32;
                    }
                }));
            }
            let (mut xs, _p) = script(steps);
            let _ = xs.read("x");
            let _ = xs.directory("d");
            let _ = xs.poll_watch_event();
        }
    }
}
