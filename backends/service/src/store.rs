//! The xenstore ring transport: moves xs_wire bytes between each guest's
//! store ring page (`struct xenstore_domain_interface`) and the xenstore
//! core, and gives the service domain's own code an in-process connection.
//!
//! The ring indices are free-running `u32`s written by the other side, so
//! every value read from the page is treated as hostile: a producer more
//! than a ring ahead of the consumer marks the connection broken (ring
//! `error` field set to `XENSTORE_ERROR_RINGIDX`) and nothing more is read
//! from it. Request bytes are consumed only as far as the core takes them
//! ([`Xenstore::feed`]): a guest that does not read its replies finds its
//! request ring full, and the service's memory does not grow.

use alloc::vec::Vec;
use guest_abi::errno::Errno;
use guest_abi::io::ring::SharedPage;
use guest_abi::io::xenstore::{XENSTORE_RING_SIZE, XS_ERROR, XsdSockmsg, parse_error};
use guest_abi::types::{DomId, Port};
use pv_guest_kernel::page::MappedPage;
use xenstore::{ConnId, Xenstore};

const REQ: usize = 0;
const RSP: usize = 1024;
const REQ_CONS: usize = 2048;
const REQ_PROD: usize = 2052;
const RSP_CONS: usize = 2056;
const RSP_PROD: usize = 2060;
const ERROR: usize = 2072;
/// `XENSTORE_ERROR_RINGIDX`: the peer's indices are inconsistent.
const ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`: the peer broke the message framing.
const ERROR_PROTO: u32 = 1;
const RING: u32 = XENSTORE_RING_SIZE as u32;

/// One guest's store ring, connected to the core.
pub struct StoreRing {
    pub page: MappedPage,
    pub conn: ConnId,
    pub port: Port,
    broken: bool,
    /// The core stopped taking this guest's requests at least once (it had
    /// not read its replies): logged the first time only, so a guest cannot
    /// fill the service's console by stopping and starting.
    held: bool,
    /// Likewise for the service's heap being short.
    held_heap: bool,
    /// Requests refused for the heap already logged (the first only).
    refusals_logged: bool,
}

impl StoreRing {
    pub fn new(page: MappedPage, conn: ConnId, port: Port) -> Self {
        Self {
            page,
            conn,
            port,
            broken: false,
            held: false,
            held_heap: false,
            refusals_logged: false,
        }
    }

    /// Copies queued output into the response ring and feeds request
    /// bytes from the ring to the core, for as long as the core accepts
    /// input: a guest that leaves its replies unread has its requests left
    /// in its ring (the core stops taking them at its quotas), so it cannot
    /// make the service hold more. Returns whether the guest must be
    /// notified (anything consumed or produced).
    pub fn pump(&mut self, xs: &mut Xenstore) -> bool {
        if self.broken {
            return false;
        }
        let mut moved = false;
        // A few rounds, so a request arriving while we answer is served now;
        // bounded, so one busy guest leaves the others their turn.
        for _ in 0..4 {
            let Ok(wrote) = self.write_output(xs) else {
                return true;
            };
            let Ok(read) = self.read_requests(xs) else {
                return true;
            };
            moved |= wrote || read;
            if !read {
                break;
            }
        }
        match self.write_output(xs) {
            Ok(wrote) => moved | wrote,
            Err(()) => true,
        }
    }

    /// Offers the request bytes waiting in the ring to the core and
    /// consumes what it took. Returns whether anything was consumed;
    /// `Err` once the ring is broken.
    fn read_requests(&mut self, xs: &mut Xenstore) -> Result<bool, ()> {
        let p = &self.page;
        let cons = p.load_u32(REQ_CONS);
        let prod = p.load_u32(REQ_PROD);
        p.read_fence();
        let avail = prod.wrapping_sub(cons);
        if avail > RING {
            self.fail(ERROR_RINGIDX);
            return Err(());
        }
        if avail == 0 {
            return Ok(false);
        }
        // Only with bytes waiting: the heap gate probes the allocator.
        if let Some(hold) = xs.hold(self.conn) {
            if hold == xenstore::Hold::Heap {
                if !self.held_heap
                    && let Some(c) = xs.connection(self.conn)
                {
                    self.held_heap = true;
                    pv_guest_kernel::println!(
                        "xenstore: domain {} held back: the service's heap is short ({} bytes free, {} more it can grow); its requests stay in its ring",
                        c.domid().0,
                        pv_guest_kernel::heap::free(),
                        pv_guest_kernel::heap::headroom()
                            .saturating_sub(pv_guest_kernel::heap::free())
                    );
                }
                return Ok(false);
            }
            if !self.held
                && let Some(c) = xs.connection(self.conn)
            {
                self.held = true;
                pv_guest_kernel::println!(
                    "xenstore: domain {} held back: {} replies unread, {} bytes in use; its requests stay in its ring",
                    c.domid().0,
                    c.outstanding(),
                    xs.memory_used(self.conn).unwrap_or(0)
                );
            }
            return Ok(false);
        }
        let mut buf = [0u8; XENSTORE_RING_SIZE];
        let n = avail as usize;
        for (i, b) in buf.iter_mut().take(n).enumerate() {
            *b = p.read_u8(REQ + (cons.wrapping_add(i as u32) % RING) as usize);
        }
        let fed = xs.feed(self.conn, &buf[..n]);
        if !self.refusals_logged
            && let Some(c) = xs.connection(self.conn)
            && c.heap_refusals() > 0
        {
            self.refusals_logged = true;
            pv_guest_kernel::println!(
                "xenstore: domain {}: requests refused with ENOMEM for the service's heap ({} bytes free, {} more it can grow); the service carries on",
                c.domid().0,
                pv_guest_kernel::heap::free(),
                pv_guest_kernel::heap::headroom().saturating_sub(pv_guest_kernel::heap::free())
            );
        }
        let taken = match fed {
            Ok(f) => f.consumed.min(n) as u32,
            Err(_) => {
                self.fail(ERROR_PROTO);
                return Err(());
            }
        };
        if taken > 0 {
            p.fence();
            p.store_u32(REQ_CONS, cons.wrapping_add(taken));
        }
        Ok(taken > 0)
    }

    /// Copies as many queued output bytes as fit into the response ring.
    /// Returns whether any were; `Err` once the ring is broken.
    fn write_output(&mut self, xs: &mut Xenstore) -> Result<bool, ()> {
        let p = &self.page;
        let mut moved = false;
        loop {
            let cons = p.load_u32(RSP_CONS);
            let prod = p.load_u32(RSP_PROD);
            let used = prod.wrapping_sub(cons);
            if used > RING {
                self.fail(ERROR_RINGIDX);
                return Err(());
            }
            let room = (RING - used) as usize;
            let Some(out) = xs.peek_output(self.conn) else {
                break;
            };
            let n = out.len().min(room);
            if n == 0 {
                break;
            }
            for (i, &b) in out.iter().take(n).enumerate() {
                p.write_u8(RSP + (prod.wrapping_add(i as u32) % RING) as usize, b);
            }
            p.write_fence();
            p.store_u32(RSP_PROD, prod.wrapping_add(n as u32));
            xs.advance_output(self.conn, n);
            moved = true;
        }
        Ok(moved)
    }

    fn fail(&mut self, code: u32) {
        self.broken = true;
        self.page.store_u32(ERROR, code);
        pv_guest_kernel::println!(
            "xenstore: connection {:?}: ring error {code}; ignoring it",
            self.conn
        );
    }
}

/// The service domain's own connection to the store (privileged, dom0).
pub struct Local {
    pub conn: ConnId,
    next_req: u32,
}

impl Local {
    pub fn new(xs: &mut Xenstore) -> Self {
        Self {
            conn: xs.connect(DomId(0), true),
            next_req: 1,
        }
    }

    /// Runs one request; the reply payload, or the error it carried.
    pub fn op(
        &mut self,
        xs: &mut Xenstore,
        ty: u32,
        tx: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let msg = xenstore::wire::encode(ty, req, tx, payload);
        xs.handle(self.conn, &msg).map_err(|e| match e {
            xenstore::HandleError::NoMemory => Errno::ENOMEM,
            _ => Errno::EIO,
        })?;
        // Our own watch events may be queued ahead of the reply: skip them.
        while let Some(m) = xs.pop_output(self.conn) {
            let Ok(parsed) = xenstore::wire::parse(&m) else {
                return Err(Errno::EIO);
            };
            let h: XsdSockmsg = parsed.header;
            if h.req_id != req || h.type_ == guest_abi::io::xenstore::XS_WATCH_EVENT {
                continue;
            }
            if h.type_ == XS_ERROR {
                return Err(parse_error(parsed.payload).unwrap_or(Errno::EIO));
            }
            return Ok(parsed.payload.to_vec());
        }
        Err(Errno::EIO)
    }

    /// Writes `value` at `path`.
    pub fn write(&mut self, xs: &mut Xenstore, path: &str, value: &[u8]) -> Result<(), Errno> {
        let mut p = Vec::with_capacity(path.len() + 1 + value.len());
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(value);
        self.op(xs, guest_abi::io::xenstore::XS_WRITE, 0, &p)
            .map(|_| ())
    }

    /// Reads `path`.
    pub fn read(&mut self, xs: &mut Xenstore, path: &str) -> Result<Vec<u8>, Errno> {
        let mut p = Vec::with_capacity(path.len() + 1);
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        self.op(xs, guest_abi::io::xenstore::XS_READ, 0, &p)
    }

    /// Sets `path`'s permissions from their wire form (e.g. `b"n0\0r1\0"`).
    pub fn set_perms(&mut self, xs: &mut Xenstore, path: &str, perms: &[u8]) -> Result<(), Errno> {
        let mut p = Vec::with_capacity(path.len() + 1 + perms.len());
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(perms);
        self.op(xs, guest_abi::io::xenstore::XS_SET_PERMS, 0, &p)
            .map(|_| ())
    }
}

/// Reads the front-end's nodes `keys` under `dir` (those present), as text,
/// for a back-end's `parse_frontend`.
pub fn read_nodes(
    xs: &mut Xenstore,
    local: &mut Local,
    dir: &str,
    keys: &[&'static str],
) -> Vec<(&'static str, alloc::string::String)> {
    let mut nodes = Vec::new();
    for &k in keys {
        if let Ok(v) = local.read(xs, &alloc::format!("{dir}/{k}")) {
            nodes.push((k, alloc::string::String::from_utf8_lossy(&v).into_owned()));
        }
    }
    nodes
}

/// A back-end's side of connecting a front-end's ring: maps its ring grant
/// at grant-mapping slot `slot` and binds its event channel (the
/// hypervisor checks the grant is the front-end's and the port is meant
/// for us). On failure nothing stays mapped or bound.
pub fn attach_ring(
    fe_dom: u16,
    ring_ref: u32,
    event_channel: u32,
    slot: u64,
    kick: pv_guest_kernel::events::Handler,
) -> Result<(pv_guest_kernel::gnttab::GrantedPage, Port), alloc::string::String> {
    use pv_guest_kernel::{DomId, GrantRef, events};
    let page = crate::mapping::map_ring(DomId(fe_dom), GrantRef(ring_ref), slot)
        .ok_or("no ring slot")?
        .map_err(|e| alloc::format!("ring grant {ring_ref}: {e}"))?;
    // Dropping `page` on the error path unmaps it.
    let port = events::bind_interdomain(DomId(fe_dom), Port(event_channel), kick)
        .map_err(|e| alloc::format!("event channel {event_channel}: {e:?}"))?;
    Ok((page, port))
}
