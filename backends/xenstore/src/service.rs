//! Request dispatch, watches, transactions and domain management.
//!
//! [`Xenstore`] owns the shared store and every connection. A request is
//! framed, checked against the caller's privilege and transaction, carried
//! out, and answered on the caller's outgoing queue with the same `req_id`
//! and `tx_id`: the request's type with its result, or `XS_ERROR` with an
//! errno name. Changes outside a transaction are announced at once to every
//! connection with a matching watch that may read the node (or its parent,
//! or could read it before a permission change); changes inside one are
//! remembered and announced only if it commits. Domains arrive by
//! INTRODUCE (or [`Xenstore::introduce`]) and leave by RELEASE; their
//! arrival and departure are reported to the transport as [`Action`]s and to
//! watchers of `@introduceDomain`/`@releaseDomain`.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::vec::Vec;

use guest_abi::io::xenstore::{
    XENSTORE_PAYLOAD_MAX, XS_CONTROL, XS_GET_DOMAIN_PATH, XS_GET_PERMS, XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED, XS_MKDIR, XS_RELEASE, XS_RESET_WATCHES, XS_RESUME, XS_RM,
    XS_SET_PERMS, XS_SET_TARGET, XS_TRANSACTION_END, XS_TRANSACTION_START, XS_UNWATCH, XS_WATCH,
    XS_WATCH_EVENT, XS_WRITE, XsdSockmsg,
};
use guest_abi::{DomId, Errno};

use crate::Limits;
use crate::conn::{ConnId, Connection, Introduction, Transaction, Watch};
use crate::heap::{self, ALLOC, HeapGate};
use crate::ops::{self, Change, Who};
use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{Access, PERM_READ, Perms};
use crate::store::{JOURNAL_ENTRY_COST, NODE_OVERHEAD, Node, Store};
use crate::wire::{self, FrameError};

/// The domain that inherits the nodes of a released domain.
const HEIR_DOMID: u16 = 0;

/// Something the transport must do after a request was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A domain was introduced (or re-introduced with a new ring): map its
    /// store page `mfn`, bind `evtchn`, and feed its requests to `conn`.
    Introduced {
        /// The domain.
        domid: DomId,
        /// Its connection.
        conn: ConnId,
        /// Machine frame of its xenstore ring page.
        mfn: u64,
        /// Its event channel for the store (unbound, in that domain).
        evtchn: u32,
    },
    /// A domain was released: unbind and unmap its ring; `conn` is gone.
    Released {
        /// The domain.
        domid: DomId,
        /// Its former connection.
        conn: ConnId,
    },
}

/// Why a request could not be handled at all (no reply was queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleError {
    /// No such connection.
    UnknownConnection,
    /// The connection broke the framing protocol earlier and is ignored.
    Ignored,
    /// The bytes were not one well-framed message; the connection is now
    /// ignored (Xen's ring `error` field should be set to
    /// `XENSTORE_ERROR_PROTO`).
    Frame(FrameError),
    /// The heap has no room even to answer the message: nothing was done;
    /// offer it again later.
    NoMemory,
}

/// Why a connection's input is not being read ([`Xenstore::hold`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// No such connection.
    Unknown,
    /// It broke the framing protocol.
    Ignored,
    /// It has [`Limits::outstanding_per_domain`] replies it has not taken.
    Outstanding,
    /// The service's heap has no room to take and answer one more request
    /// from it ([`INPUT_BOUND`] beyond its reserve).
    Heap,
}

/// Wire size of the largest message.
const MSG: usize = wire::HEADER_SIZE + XENSTORE_PAYLOAD_MAX;

/// What handling a message takes before its own bound is known and
/// checked: working out that bound (a canonical path and a home prefix)
/// and an error reply.
pub(crate) const PRE_BOUND: usize = 2 * MSG + 1024;

/// What taking one more message from a connection's input may take before
/// it is handled: reassembling it (a header, then the whole message) and
/// [`PRE_BOUND`]. A connection is read only while the heap can give this
/// (beyond the connection's reserve).
pub const INPUT_BOUND: usize = MSG + wire::HEADER_SIZE + 2 * ALLOC + PRE_BOUND;

/// What [`Xenstore::feed`] did with the bytes it was offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes taken; the rest must be offered again later (leave them in the
    /// ring).
    pub consumed: usize,
    /// Complete requests handled.
    pub handled: usize,
}

/// Longest home prefix a relative path gains (`/local/domain/65535/`).
const HOME_PREFIX_MAX: usize = 20;

/// Memory a watch costs beyond its path and token.
const WATCH_OVERHEAD: usize = 64;

/// A successful reply, possibly followed by a watch event.
struct Reply {
    payload: Vec<u8>,
    /// An event to queue right after the reply (WATCH's initial event).
    then_event: Option<(Vec<u8>, bool)>,
}

impl From<Vec<u8>> for Reply {
    fn from(payload: Vec<u8>) -> Self {
        Self {
            payload,
            then_event: None,
        }
    }
}

/// The xenstore service.
#[derive(Clone, Debug)]
pub struct Xenstore {
    store: Store,
    conns: BTreeMap<ConnId, Connection>,
    domains: BTreeMap<u16, ConnId>,
    next_conn: u32,
    actions: VecDeque<Action>,
    limits: Limits,
    heap: HeapGate,
}

impl Default for Xenstore {
    fn default() -> Self {
        Self::new()
    }
}

impl Xenstore {
    /// A store holding the root (and the special nodes), all owned by dom0
    /// with no access for anyone else, with xenstored's default quotas.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// Like [`Xenstore::new`] with other quotas.
    #[must_use]
    pub fn with_limits(limits: Limits) -> Self {
        let perms = Perms::new(0, Access::None);
        let mut store = Store::new(perms.clone());
        store.put_node(INTRODUCE_DOMAIN, Node::new(perms.clone()));
        store.put_node(RELEASE_DOMAIN, Node::new(perms));
        Self {
            store,
            conns: BTreeMap::new(),
            domains: BTreeMap::new(),
            next_conn: 1,
            actions: VecDeque::new(),
            limits,
            heap: heap::unlimited,
        }
    }

    /// Ask `gate` before every allocation made for a client (see
    /// [`crate::heap`]); the service domain passes its real heap's.
    pub fn set_heap_gate(&mut self, gate: HeapGate) {
        self.heap = gate;
    }

    /// The quotas in force.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The shared store (committed state).
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- connections ------------------------------------------------------

    /// Open a connection for a client in `domid` that was not introduced
    /// (the service domain's own clients, dom0's tools). `privileged` clients
    /// may do anything.
    pub fn connect(&mut self, domid: DomId, privileged: bool) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1);
        self.conns
            .insert(id, Connection::new(id, domid.0, privileged));
        id
    }

    /// Close a connection, dropping its watches, transactions and queued
    /// output. Closing an introduced domain's connection releases the domain.
    /// Returns whether the connection existed.
    pub fn disconnect(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let domid = c.domid;
        if self.domains.get(&domid) == Some(&conn) {
            return self.release(DomId(domid)).is_ok();
        }
        self.conns.remove(&conn).is_some()
    }

    /// A connection's state.
    #[must_use]
    pub fn connection(&self, conn: ConnId) -> Option<&Connection> {
        self.conns.get(&conn)
    }

    /// Every connection.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values()
    }

    /// The connection of an introduced domain.
    #[must_use]
    pub fn domain_connection(&self, domid: DomId) -> Option<ConnId> {
        self.domains.get(&domid.0).copied()
    }

    /// Introduce a domain whose ring page is `mfn` and event channel
    /// `evtchn` (what INTRODUCE does, for domains the service domain builds
    /// itself). A new domain gets an unprivileged connection and fires
    /// `@introduceDomain`; introducing it again only updates its ring. Either
    /// way an [`Action::Introduced`] is queued. `EINVAL` for dom0 and the
    /// reserved ids.
    pub fn introduce(&mut self, domid: DomId, mfn: u64, evtchn: u32) -> Result<ConnId, Errno> {
        if domid.0 == 0 || !domid.is_ordinary() {
            return Err(Errno::EINVAL);
        }
        let intro = Introduction { mfn, evtchn };
        let need = heap::btree_insert(
            self.conns.len(),
            core::mem::size_of::<(ConnId, Connection)>(),
        ) + heap::btree_insert(self.domains.len(), 8)
            + heap::vec_growth(self.actions.len(), core::mem::size_of::<Action>())
            + 4 * ALLOC;
        if !(self.heap)(need, 0) {
            return Err(Errno::ENOMEM);
        }
        let conn = match self.domains.get(&domid.0) {
            Some(&id) => id,
            None => {
                let id = self.connect(domid, false);
                self.domains.insert(domid.0, id);
                self.fire(&Change::at(INTRODUCE_DOMAIN));
                id
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.introduction = Some(intro);
        }
        self.actions.push_back(Action::Introduced {
            domid,
            conn,
            mfn,
            evtchn,
        });
        Ok(conn)
    }

    /// Release an introduced domain (what RELEASE does): its connection goes
    /// away with its watches and transactions, nodes it owned pass to dom0
    /// and grants naming it vanish (so a later domain reusing the id inherits
    /// nothing), `@releaseDomain` fires and an [`Action::Released`] is queued.
    /// `ENOENT` if the domain was not introduced.
    /// `ENOMEM`, with nothing done, if the heap cannot give what copying
    /// the nodes that name it (those shared with transactions) may take:
    /// try again later.
    pub fn release(&mut self, domid: DomId) -> Result<(), Errno> {
        if !self.domains.contains_key(&domid.0) {
            return Err(Errno::ENOENT);
        }
        let need = self
            .store
            .forget_cost(domid.0)
            .saturating_add(heap::vec_growth(
                self.actions.len(),
                core::mem::size_of::<Action>(),
            ));
        if !(self.heap)(need, 0) {
            return Err(Errno::ENOMEM);
        }
        let conn = self.domains.remove(&domid.0).ok_or(Errno::ENOENT)?;
        self.conns.remove(&conn);
        self.store.forget_domain(domid.0, HEIR_DOMID);
        self.fire(&Change::at(RELEASE_DOMAIN));
        self.actions.push_back(Action::Released { domid, conn });
        Ok(())
    }

    /// Create `domid`'s home directory, `/local/domain/<domid>`, owned by the
    /// domain with no access for others (as a toolstack would before
    /// starting it). Watches fire as for any privileged MKDIR/SET_PERMS.
    pub fn create_home(&mut self, domid: DomId) -> Result<(), Errno> {
        let who = Who {
            domid: 0,
            privileged: true,
        };
        if !(self.heap)(8 * MSG, 0) {
            return Err(Errno::ENOMEM);
        }
        let home = path::home_path(domid.0);
        let mut req = home.clone().into_bytes();
        req.push(0);
        self.store_op(None, who, 0, XS_MKDIR, &req)?;
        Perms::new(domid.0, Access::None).encode(&mut req);
        self.store_op(None, who, 0, XS_SET_PERMS, &req)?;
        Ok(())
    }

    /// Drain the queued [`Action`]s, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        self.actions.drain(..).collect()
    }

    // ---- output -----------------------------------------------------------

    /// The unsent bytes of the oldest queued message of `conn`, if any: copy
    /// as many as fit into the ring, then call [`Xenstore::advance_output`].
    #[must_use]
    pub fn peek_output(&self, conn: ConnId) -> Option<&[u8]> {
        self.conns.get(&conn)?.out.peek()
    }

    /// Mark `n` bytes of `conn`'s queued output as sent.
    pub fn advance_output(&mut self, conn: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.out.advance(n);
        }
    }

    /// Take the oldest queued message of `conn` whole (header included).
    pub fn pop_output(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        self.conns.get_mut(&conn)?.out.pop()
    }

    // ---- quotas -----------------------------------------------------------

    /// Memory `conn`'s domain makes the service hold (see
    /// [`Limits::memory_per_domain`]), or `None` for no such connection.
    #[must_use]
    pub fn memory_used(&self, conn: ConnId) -> Option<usize> {
        Some(usage(&self.store, self.conns.get(&conn)?))
    }

    /// Whether `conn` may be given more request bytes now. False for an
    /// unknown or ignored connection and, for an unprivileged one, while it
    /// has [`Limits::outstanding_per_domain`] replies waiting for the
    /// transport: the transport then leaves its requests in the ring
    /// (back-pressure) until it has taken the replies. A domain at its
    /// memory quota is still read (its requests that would need more
    /// memory are refused with `ENOMEM`), so it can always free memory by
    /// ending transactions, removing nodes or watches.
    ///
    /// False too while the heap cannot give [`INPUT_BOUND`] (plus a slot
    /// in the connection's output queue) beyond what the connection must
    /// leave ([`Limits::heap_reserve`]): its requests then stay in its
    /// ring until memory is freed. See [`Xenstore::hold`] for the reason.
    #[must_use]
    pub fn accepts_input(&self, conn: ConnId) -> bool {
        self.hold(conn).is_none()
    }

    /// Why `conn`'s input is not read now, or `None` if it is.
    #[must_use]
    pub fn hold(&self, conn: ConnId) -> Option<Hold> {
        let Some(c) = self.conns.get(&conn) else {
            return Some(Hold::Unknown);
        };
        if c.ignored {
            return Some(Hold::Ignored);
        }
        if !c.privileged && c.out.replies() >= self.limits.outstanding_per_domain {
            return Some(Hold::Outstanding);
        }
        let need = INPUT_BOUND.saturating_add(c.out.growth_bytes());
        if !heap_room(self.heap, &self.store, &self.limits, c, need) {
            return Some(Hold::Heap);
        }
        None
    }

    // ---- input ------------------------------------------------------------

    /// Offer bytes read from `conn`'s request ring, in any split; the ring
    /// transport's entry point. Takes bytes only while
    /// [`Xenstore::accepts_input`] holds, handling every message they
    /// complete, and says how many it took: the transport consumes exactly
    /// those from the ring and offers the rest again once the client has
    /// read its replies.
    pub fn feed(&mut self, conn: ConnId, mut bytes: &[u8]) -> Result<Fed, HandleError> {
        let mut fed = Fed::default();
        while !bytes.is_empty() && self.accepts_input(conn) {
            let (used, handled) = self.take_input(conn, bytes)?;
            bytes = bytes.get(used..).unwrap_or(&[]);
            fed.consumed += used;
            if handled {
                fed.handled += 1;
            } else if used == 0 {
                break;
            }
        }
        if let Some(c) = self.conns.get(&conn)
            && c.ignored
        {
            return Err(HandleError::Ignored);
        }
        Ok(fed)
    }

    /// Feed bytes from an in-process client, in any split. Every message
    /// they complete is handled in order, whatever the client's
    /// outstanding replies (use [`Xenstore::feed`] for a ring, which stops
    /// at the quotas). Returns how many messages were handled.
    pub fn receive(&mut self, conn: ConnId, mut bytes: &[u8]) -> Result<usize, HandleError> {
        let mut handled = 0;
        while !bytes.is_empty() {
            if self.conns.get(&conn).is_some_and(|c| c.ignored) {
                return Err(HandleError::Ignored);
            }
            let (used, done) = self.take_input(conn, bytes)?;
            bytes = bytes.get(used..).unwrap_or(&[]);
            if done {
                handled += 1;
            } else if used == 0 {
                break;
            }
        }
        Ok(handled)
    }

    /// Adds a prefix of `bytes` to `conn`'s partial message, handling the
    /// message if that completes one: (bytes taken, whether one was
    /// handled). Broken framing marks the connection ignored.
    fn take_input(&mut self, conn: ConnId, bytes: &[u8]) -> Result<(usize, bool), HandleError> {
        // Nothing is taken unless the heap can give what reading and
        // answering one message takes, and the reply's queue slot.
        let room = {
            let c = self
                .conns
                .get(&conn)
                .ok_or(HandleError::UnknownConnection)?;
            let need = INPUT_BOUND.saturating_add(c.out.growth_bytes());
            heap_room(self.heap, &self.store, &self.limits, c, need)
        };
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(HandleError::UnknownConnection)?;
        if !room || !c.out.reserve_slot() {
            return Ok((0, false));
        }
        let (used, msg) = match c.input.push(bytes) {
            Ok(r) => r,
            Err(e) => {
                c.ignored = true;
                return Err(HandleError::Frame(e));
            }
        };
        match msg {
            Some(m) => {
                self.handle(conn, &m)?;
                Ok((used, true))
            }
            None => Ok((used, false)),
        }
    }

    /// Handle one complete request message from `conn` and queue its reply
    /// (and any watch events it causes).
    ///
    /// The request runs only if the heap can give an upper bound of what it
    /// allocates (see [`crate::heap`]) beyond what the client must leave;
    /// otherwise it is answered `ENOMEM` and changes nothing.
    /// [`HandleError::NoMemory`] if even that answer cannot be afforded.
    pub fn handle(&mut self, conn: ConnId, request: &[u8]) -> Result<(), HandleError> {
        let c = self
            .conns
            .get(&conn)
            .ok_or(HandleError::UnknownConnection)?;
        if c.ignored {
            return Err(HandleError::Ignored);
        }
        let need = PRE_BOUND.saturating_add(c.out.growth_bytes());
        if !heap_room(self.heap, &self.store, &self.limits, c, need) {
            return Err(HandleError::NoMemory);
        }
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(HandleError::UnknownConnection)?;
        if !c.out.reserve_slot() {
            return Err(HandleError::NoMemory);
        }
        let msg = match wire::parse(request) {
            Ok(m) => m,
            Err(e) => {
                c.ignored = true;
                return Err(HandleError::Frame(e));
            }
        };
        let h = msg.header;
        let bound = self.request_bound(conn, &h, msg.payload);
        let afforded = self
            .conns
            .get(&conn)
            .is_some_and(|c| heap_room(self.heap, &self.store, &self.limits, c, bound));
        let result = if afforded {
            self.dispatch(conn, &h, msg.payload)
        } else {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.heap_refusals = c.heap_refusals.saturating_add(1);
            }
            Err(Errno::ENOMEM)
        };
        let (reply, then_event) = match result {
            Ok(r) if r.payload.len() <= XENSTORE_PAYLOAD_MAX => (
                wire::encode(h.type_, h.req_id, h.tx_id, &r.payload),
                r.then_event,
            ),
            Ok(_) => (wire::encode_error(h.req_id, h.tx_id, Errno::E2BIG), None),
            Err(e) => (wire::encode_error(h.req_id, h.tx_id, e), None),
        };
        let Self {
            store,
            conns,
            limits,
            ..
        } = self;
        let total = total_usage(store, conns);
        if let Some(c) = conns.get_mut(&conn) {
            c.out.push_reply(reply);
            if let Some((event, dedup)) = then_event {
                queue_event(store, c, limits, total, event, dedup);
            }
        }
        Ok(())
    }

    /// An upper bound of what handling request `h` with `payload` from
    /// `conn` allocates (its watch events aside: [`Xenstore::fire`] asks
    /// for those itself), from the request and the state it will meet.
    fn request_bound(&self, conn: ConnId, h: &XsdSockmsg, payload: &[u8]) -> usize {
        let Some(c) = self.conns.get(&conn) else {
            return 0;
        };
        let p = payload.len();
        // Argument lists, path copies, the value, the reply twice (payload
        // and message) and an event message, the quota's own look at the
        // path, the output queue's growth.
        let base = 4 * MSG
            + 8 * (p + ALLOC)
            + 3 * (wire::count_strings(payload) + 1) * 2 * ALLOC
            + 2 * c.out.growth_bytes()
            + 2048;
        let who = Who {
            domid: c.domid,
            privileged: c.privileged,
        };
        let op = h.type_;
        if ops::is_store_op(op) {
            let view = if h.tx_id == 0 {
                Some(&self.store)
            } else {
                c.transactions.get(&h.tx_id).map(|t| &t.store)
            };
            return match view {
                Some(v) => base.saturating_add(store_op_bound(v, &self.limits, who, op, payload)),
                None => base,
            };
        }
        match op {
            XS_WATCH => base
                .saturating_add(heap::vec_growth(
                    c.watches.len(),
                    core::mem::size_of::<Watch>(),
                ))
                .saturating_add(2 * MSG),
            XS_TRANSACTION_START => base
                .saturating_add(self.store.clone_heap_cost())
                .saturating_add(heap::btree_insert(
                    c.transactions.len(),
                    core::mem::size_of::<(u32, Transaction)>(),
                )),
            XS_TRANSACTION_END => match c.transactions.get(&h.tx_id) {
                Some(t) => base.saturating_add(commit_bound(&self.store, &t.store)),
                None => base,
            },
            XS_INTRODUCE => base
                .saturating_add(heap::btree_insert(
                    self.conns.len(),
                    core::mem::size_of::<(ConnId, Connection)>(),
                ))
                .saturating_add(heap::btree_insert(self.domains.len(), 8))
                .saturating_add(heap::vec_growth(
                    self.actions.len(),
                    core::mem::size_of::<Action>(),
                )),
            XS_RELEASE => {
                let domid = wire::one_arg(payload)
                    .ok()
                    .and_then(|a| path::parse_domid(a).ok())
                    .unwrap_or(0);
                base.saturating_add(self.store.forget_cost(domid))
                    .saturating_add(heap::vec_growth(
                        self.actions.len(),
                        core::mem::size_of::<Action>(),
                    ))
            }
            _ => base,
        }
    }

    fn dispatch(&mut self, conn: ConnId, h: &XsdSockmsg, payload: &[u8]) -> Result<Reply, Errno> {
        let c = self.conns.get(&conn).ok_or(Errno::EINVAL)?;
        let who = Who {
            domid: c.domid,
            privileged: c.privileged,
        };
        let op = h.type_;
        let known = ops::is_store_op(op)
            || matches!(
                op,
                XS_CONTROL
                    | XS_WATCH
                    | XS_UNWATCH
                    | XS_TRANSACTION_START
                    | XS_TRANSACTION_END
                    | XS_INTRODUCE
                    | XS_RELEASE
                    | XS_GET_DOMAIN_PATH
                    | XS_IS_DOMAIN_INTRODUCED
                    | XS_RESUME
                    | XS_SET_TARGET
                    | XS_RESET_WATCHES
            );
        if !known {
            return Err(Errno::ENOSYS);
        }
        let privileged_only = matches!(
            op,
            XS_CONTROL
                | XS_INTRODUCE
                | XS_RELEASE
                | XS_IS_DOMAIN_INTRODUCED
                | XS_RESUME
                | XS_SET_TARGET
        );
        if privileged_only && !who.privileged {
            return Err(Errno::EACCES);
        }
        // Watches ignore the transaction id; everything else needs it valid.
        if !matches!(op, XS_WATCH | XS_UNWATCH)
            && h.tx_id != 0
            && !c.transactions.contains_key(&h.tx_id)
        {
            return Err(Errno::ENOENT);
        }
        match op {
            _ if ops::is_store_op(op) => self
                .store_op(Some(conn), who, h.tx_id, op, payload)
                .map(Reply::from),
            XS_WATCH => self.watch(conn, who, payload),
            XS_UNWATCH => self.unwatch(conn, who, payload).map(Reply::from),
            XS_TRANSACTION_START => self.transaction_start(conn, who, h.tx_id).map(Reply::from),
            XS_TRANSACTION_END => self
                .transaction_end(conn, who, h.tx_id, payload)
                .map(Reply::from),
            XS_GET_DOMAIN_PATH => {
                let domid = path::parse_domid(wire::one_arg(payload)?)?;
                let mut out = path::home_path(domid).into_bytes();
                out.push(0);
                Ok(out.into())
            }
            XS_INTRODUCE => {
                let args: Vec<&[u8]> = wire::strings(payload).take(3).collect();
                let [domid, mfn, evtchn] = args[..] else {
                    return Err(Errno::EINVAL);
                };
                let domid = path::parse_domid(domid)?;
                let mfn = parse_mfn(mfn)?;
                let evtchn = path::parse_decimal(evtchn, 10)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or(Errno::EINVAL)?;
                self.introduce(DomId(domid), mfn, evtchn)?;
                Ok(ops::ok().into())
            }
            XS_RELEASE => {
                let domid = path::parse_domid(wire::one_arg(payload)?)?;
                self.release(DomId(domid))?;
                Ok(ops::ok().into())
            }
            XS_IS_DOMAIN_INTRODUCED => {
                let domid = path::parse_domid(wire::one_arg(payload)?)?;
                let answer: &[u8] = if self.domains.contains_key(&domid) {
                    b"T\0"
                } else {
                    b"F\0"
                };
                Ok(answer.to_vec().into())
            }
            XS_RESET_WATCHES => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.watches.clear();
                    c.watch_bytes = 0;
                    c.transactions.clear();
                }
                Ok(ops::ok().into())
            }
            // CONTROL, RESUME and SET_TARGET are not offered.
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Run a store request on the shared store (`tx_id` 0) or in the
    /// caller's transaction.
    fn store_op(
        &mut self,
        conn: Option<ConnId>,
        who: Who,
        tx_id: u32,
        op: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        if !who.privileged
            && let Some(c) = conn.and_then(|c| self.conns.get(&c))
        {
            let tx = c.transactions.get(&tx_id).map(|t| &t.store);
            let bound = growth_bound(&self.limits, who, tx, op, payload);
            if bound > 0 && over_quota(&self.store, &self.conns, &self.limits, c, bound) {
                return Err(Errno::ENOMEM);
            }
        }
        let mut changes = Vec::new();
        if tx_id == 0 {
            let result = ops::run(
                &mut self.store,
                who,
                &self.limits,
                op,
                payload,
                &mut changes,
            );
            for ch in &changes {
                self.fire(ch);
            }
            return result;
        }
        let Self { conns, limits, .. } = self;
        let tx = conn
            .and_then(|c| conns.get_mut(&c))
            .and_then(|c| c.transactions.get_mut(&tx_id))
            .ok_or(Errno::ENOENT)?;
        let result = ops::run(&mut tx.store, who, limits, op, payload, &mut changes);
        if let Some(j) = tx.store.journal_mut() {
            for ch in &changes {
                j.queue_event(&ch.path, ch.exact);
            }
            if !who.privileged && j.accessed.len() > limits.nodes_per_transaction {
                tx.failed = true;
                return Err(Errno::ENOSPC);
            }
        }
        result
    }

    fn watch(&mut self, conn: ConnId, who: Who, payload: &[u8]) -> Result<Reply, Errno> {
        let args: Vec<&[u8]> = wire::strings(payload).collect();
        let [raw, token] = args[..] else {
            return Err(Errno::EINVAL);
        };
        let max = (!who.privileged).then_some(self.limits.path_len);
        let c = path::canonicalize(raw, who.domid, true, max)?;
        let cost = watch_cost(&c.path, token);
        let over = !who.privileged
            && self
                .conns
                .get(&conn)
                .is_some_and(|x| over_quota(&self.store, &self.conns, &self.limits, x, cost));
        let conn = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        if conn
            .watches
            .iter()
            .any(|w| w.path == c.path && w.token == token)
        {
            return Err(Errno::EEXIST);
        }
        if !who.privileged && conn.watches.len() >= self.limits.watches_per_domain {
            return Err(Errno::E2BIG);
        }
        if over {
            return Err(Errno::ENOMEM);
        }
        conn.watch_bytes = conn.watch_bytes.saturating_add(cost);
        let watch = Watch {
            path: c.path,
            token: token.to_vec(),
            relative_prefix: c.relative_prefix,
        };
        // Every watch fires once straight away, with the path as given.
        let event = event_message(&watch, &watch.path);
        let dedup = !path::is_special(&watch.path);
        conn.watches.push(watch);
        Ok(Reply {
            payload: ops::ok(),
            then_event: event.map(|e| (e, dedup)),
        })
    }

    fn unwatch(&mut self, conn: ConnId, who: Who, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let args: Vec<&[u8]> = wire::strings(payload).collect();
        let [raw, token] = args[..] else {
            return Err(Errno::EINVAL);
        };
        let c = path::canonicalize(raw, who.domid, true, None)?;
        let conn = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        let i = conn
            .watches
            .iter()
            .position(|w| w.path == c.path && w.token == token)
            .ok_or(Errno::ENOENT)?;
        let w = conn.watches.remove(i);
        conn.watch_bytes = conn
            .watch_bytes
            .saturating_sub(watch_cost(&w.path, &w.token));
        Ok(ops::ok())
    }

    fn transaction_start(&mut self, conn: ConnId, who: Who, tx_id: u32) -> Result<Vec<u8>, Errno> {
        // No nesting: a start inside an (existing) transaction is refused.
        if tx_id != 0 {
            return Err(Errno::EBUSY);
        }
        let copy_cost = self.store.copy_cost();
        let over = !who.privileged
            && self
                .conns
                .get(&conn)
                .is_some_and(|x| over_quota(&self.store, &self.conns, &self.limits, x, copy_cost));
        let limits = &self.limits;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        if !who.privileged && c.transactions.len() >= limits.transactions_per_domain {
            return Err(Errno::ENOSPC);
        }
        if over {
            return Err(Errno::ENOMEM);
        }
        let snapshot = self.store.clone();
        let id = loop {
            let id = c.next_tx_id;
            c.next_tx_id = id.wrapping_add(1);
            if id != 0 && !c.transactions.contains_key(&id) {
                break id;
            }
        };
        let mut store = snapshot;
        store.start_journal();
        c.transactions.insert(
            id,
            Transaction {
                store,
                failed: false,
                copy_cost,
            },
        );
        Ok(format!("{id}\0").into_bytes())
    }

    fn transaction_end(
        &mut self,
        conn: ConnId,
        who: Who,
        tx_id: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let commit = match wire::one_arg(payload)? {
            b"T" => true,
            b"F" => false,
            _ => return Err(Errno::EINVAL),
        };
        let c = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        let tx = c.transactions.remove(&tx_id).ok_or(Errno::ENOENT)?;
        if !commit {
            return Ok(ops::ok());
        }
        if tx.failed {
            return Err(Errno::ENOSPC);
        }
        let mut copy = tx.store;
        let journal = copy.take_journal().unwrap_or_default();
        if !who.privileged {
            let d = who.domid;
            let before = self.store.owned_by(d) as usize;
            let mut after = before;
            for p in &journal.modified {
                if self.store.get(p).is_some_and(|n| n.perms().owner() == d) {
                    after = after.saturating_sub(1);
                }
                if copy.get(p).is_some_and(|n| n.perms().owner() == d) {
                    after += 1;
                }
            }
            if after > before && after > self.limits.nodes_per_domain {
                return Err(Errno::ENOSPC);
            }
        }
        let conflict = journal
            .accessed
            .iter()
            .any(|(p, seen)| self.store.get(p).map(Node::generation) != seen.generation);
        if conflict {
            return Err(Errno::EAGAIN);
        }
        for p in &journal.modified {
            match copy.take_shared(p) {
                Some(node) => self.store.put_shared(p, node),
                None => self.store.delete_node(p),
            }
        }
        for (p, exact) in &journal.events {
            let old_perms = journal.accessed.get(p).and_then(|s| s.perms.clone());
            self.fire(&Change {
                path: p.clone(),
                exact: *exact,
                old_perms,
                gone: None,
            });
        }
        Ok(ops::ok())
    }

    /// Announce `ch` to every connection with a matching watch that may see it.
    fn fire(&mut self, ch: &Change) {
        let Self {
            store,
            conns,
            limits,
            heap: gate,
            ..
        } = self;
        let dedup = !path::is_special(&ch.path);
        let mut total = total_usage(store, conns);
        for c in conns.values_mut() {
            let matches = |w: &&Watch| {
                if ch.exact {
                    w.path == ch.path
                } else {
                    path::is_child(&ch.path, &w.path)
                }
            };
            if c.ignored || !c.watches.iter().any(|w| matches(&w)) {
                continue;
            }
            let who = Who {
                domid: c.domid,
                privileged: c.privileged,
            };
            if !watch_permitted(store, who, ch) {
                continue;
            }
            // Only if the heap can give the events (as they would be
            // dropped past the quotas).
            let (n, bytes) =
                c.watches
                    .iter()
                    .filter(matches)
                    .fold((0usize, 0usize), |(n, b), w| {
                        (
                            n + 1,
                            b.saturating_add(w.path.len().max(ch.path.len()) + w.token.len()),
                        )
                    });
            let need = bytes
                .saturating_add(n.saturating_mul(wire::HEADER_SIZE + 2 + 3 * ALLOC))
                .saturating_mul(2)
                .saturating_add(heap::vec_growth(n, core::mem::size_of::<Vec<u8>>()))
                .saturating_add(n.saturating_mul(c.out.growth_bytes().max(64)));
            if !heap_room(*gate, store, limits, c, need) {
                continue;
            }
            let events: Vec<Vec<u8>> = c
                .watches
                .iter()
                .filter(matches)
                .filter_map(|w| event_message(w, &ch.path))
                .collect();
            for e in events {
                let len = e.len();
                if queue_event(store, c, limits, total, e, dedup) && !c.privileged {
                    total = total.saturating_add(len);
                }
            }
        }
    }
}

/// Whether the heap can give `need` bytes for client `c` and keep what it
/// must leave: nothing for a privileged client; [`Limits::heap_reserve`]
/// for an unprivileged one, plus [`Limits::heap_reserve_light`] once its
/// domain holds more than [`Limits::light_usage`].
fn heap_room(gate: HeapGate, store: &Store, limits: &Limits, c: &Connection, need: usize) -> bool {
    let keep = if c.privileged {
        0
    } else if usage(store, c) > limits.light_usage {
        limits
            .heap_reserve
            .saturating_add(limits.heap_reserve_light)
    } else {
        limits.heap_reserve
    };
    gate(need, keep)
}

/// An upper bound of what store request `op` allocates on `view` (the
/// shared store or a transaction's copy) beyond the request's base: the
/// nodes it creates, copies of nodes it changes that are shared with
/// another copy, the subtree a removal lists, and journal entries.
fn store_op_bound(view: &Store, limits: &Limits, who: Who, op: u32, payload: &[u8]) -> usize {
    let raw = payload.split(|&b| b == 0).next().unwrap_or(&[]);
    let max = (!who.privileged).then_some(limits.path_len);
    let Ok(c) = path::canonicalize(raw, who.domid, true, max) else {
        return 0;
    };
    let len = c.path.len();
    // Walk up to the nearest existing node: missing components, the
    // largest permission list on the way.
    let mut missing = 0usize;
    let mut perms = 0usize;
    let mut cur = c.path.as_str();
    let ancestor = loop {
        if let Some(n) = view.get(cur) {
            perms = perms.max(n.perms().heap_size());
            break Some(n);
        }
        missing += 1;
        match path::parent(cur) {
            Some(p) => cur = p,
            None => break None,
        }
    };
    let node = view.get(&c.path);
    let journal = |entries: usize, perms: usize| {
        view.journal()
            .map_or(0, |j| j.entry_cost(entries, len, perms))
    };
    let reads = journal(missing + 2, perms);
    match op {
        XS_WRITE | XS_MKDIR => match node {
            Some(n) => reads
                .saturating_add(n.clone_cost())
                .saturating_add(journal(2, n.perms().heap_size())),
            None => {
                let Some(a) = ancestor else { return reads };
                let perms = a.perms().heap_size();
                let per_node = 4 * (len + ALLOC)
                    + 2 * core::mem::size_of::<Node>()
                    + 4 * ALLOC
                    + 2 * perms
                    + view.insert_cost(missing)
                    + heap::btree_insert(a.children().count().max(1), 24);
                reads
                    .saturating_add(a.clone_cost())
                    .saturating_add(missing.saturating_mul(per_node))
                    .saturating_add(journal(2 * missing + 2, perms))
                    .saturating_add(heap::vec_growth(missing, 24))
                    .saturating_add(heap::vec_growth(missing, 16))
            }
        },
        XS_RM => match node {
            Some(n) => {
                let (nodes, path_bytes, perm_bytes) = view.subtree_cost(&c.path);
                let parent = path::parent(&c.path).and_then(|p| view.get(p));
                let parent_cost = parent.map_or(0, |p| p.clone_cost() + p.perms().heap_size());
                reads
                    .saturating_add(parent_cost)
                    .saturating_add(n.perms().heap_size())
                    .saturating_add(path_bytes)
                    .saturating_add(nodes.saturating_mul(ALLOC))
                    .saturating_add(2 * perm_bytes)
                    .saturating_add(heap::vec_growth(nodes, 24))
                    .saturating_add(heap::vec_growth(
                        nodes,
                        core::mem::size_of::<crate::store::Removed>(),
                    ))
                    .saturating_add(heap::vec_growth(nodes, core::mem::size_of::<Change>()))
                    .saturating_add(
                        view.journal()
                            .map_or(0, |j| j.entry_cost(nodes + 2, len, perms))
                            .saturating_add(
                                view.journal()
                                    .map_or(0, |_| 4 * path_bytes + 2 * perm_bytes),
                            ),
                    )
            }
            None => reads,
        },
        XS_SET_PERMS => match node {
            Some(n) => reads
                .saturating_add(n.clone_cost())
                .saturating_add(2 * n.perms().heap_size())
                .saturating_add(journal(2, n.perms().heap_size().max(payload.len() * 2))),
            None => reads,
        },
        XS_GET_PERMS => reads.saturating_add(node.map_or(0, |n| n.perms().heap_size() * 16)),
        _ => reads,
    }
}

/// An upper bound of what committing transaction copy `copy` into
/// `store` allocates: each node it changed put back (a key, a tree
/// insert, a copy if shared) and each event's change record.
fn commit_bound(store: &Store, copy: &Store) -> usize {
    let Some(j) = copy.journal() else {
        return 0;
    };
    let nodes = j.modified.iter().fold(0usize, |t, p| {
        t.saturating_add(p.len() + ALLOC)
            .saturating_add(store.insert_cost(0))
            .saturating_add(copy.get(p).map_or(0, Node::clone_cost))
    });
    let events = j.events.iter().fold(0usize, |t, (p, _)| {
        let perms = j
            .accessed
            .get(p)
            .and_then(|s| s.perms.as_ref())
            .map_or(0, Perms::heap_size);
        t.saturating_add(p.len() + 2 * ALLOC + perms + core::mem::size_of::<Change>())
    });
    nodes.saturating_add(events).saturating_add(4096)
}

/// May `who` hear about `ch`? If it could read the node before a permission
/// change, or can read the node or its parent now (or just before the node
/// was removed).
fn watch_permitted(store: &Store, who: Who, ch: &Change) -> bool {
    let readable = |p: &Perms| p.access_for(who.domid, who.privileged) & PERM_READ != 0;
    if ch.old_perms.as_ref().is_some_and(readable) {
        return true;
    }
    let (node, parent) = match &ch.gone {
        Some((n, p)) => (Some(n), p.as_ref()),
        None => {
            let Some(n) = store.get(&ch.path) else {
                return false;
            };
            let parent = path::parent(&ch.path)
                .and_then(|p| store.get(p))
                .map(Node::perms);
            (Some(n.perms()), parent)
        }
    };
    node.is_some_and(readable) || parent.is_some_and(readable)
}

/// The WATCH_EVENT message telling `w`'s owner that `changed` changed, or
/// `None` if it would not fit in a message.
fn event_message(w: &Watch, changed: &str) -> Option<Vec<u8>> {
    let shown = changed
        .get(w.relative_prefix..)
        .filter(|s| !s.is_empty())
        .unwrap_or(changed);
    let mut payload = Vec::with_capacity(shown.len() + w.token.len() + 2);
    payload.extend_from_slice(shown.as_bytes());
    payload.push(0);
    payload.extend_from_slice(&w.token);
    payload.push(0);
    (payload.len() <= XENSTORE_PAYLOAD_MAX).then(|| wire::encode(XS_WATCH_EVENT, 0, 0, &payload))
}

/// Queue a watch event on `c` unless an identical one is pending (`dedup`)
/// or an unprivileged client already has too much unread output or would
/// exceed its memory quota (as xenstored, the event is then dropped: a
/// client that does not read cannot make the service hold more).
///
/// `total` is what every unprivileged domain together makes the service
/// hold ([`total_usage`]); an event past [`Limits::memory_total`] is
/// dropped too. Returns whether the event was queued.
fn queue_event(
    store: &Store,
    c: &mut Connection,
    limits: &Limits,
    total: usize,
    event: Vec<u8>,
    dedup: bool,
) -> bool {
    if !c.privileged
        && (c.out.bytes().saturating_add(event.len()) > limits.queued_bytes
            || usage(store, c).saturating_add(event.len()) > limits.memory_per_domain
            || total.saturating_add(event.len()) > limits.memory_total)
    {
        return false;
    }
    c.out.push_event(event, dedup);
    true
}

/// What every unprivileged domain together makes the service hold (each
/// counted as in [`usage`]).
fn total_usage(store: &Store, conns: &BTreeMap<ConnId, Connection>) -> usize {
    conns
        .values()
        .filter(|c| !c.privileged)
        .fold(0usize, |t, c| t.saturating_add(usage(store, c)))
}

/// True when `extra` more bytes for unprivileged `c` would pass its own
/// memory quota or the quota of all unprivileged domains together.
fn over_quota(
    store: &Store,
    conns: &BTreeMap<ConnId, Connection>,
    limits: &Limits,
    c: &Connection,
    extra: usize,
) -> bool {
    usage(store, c).saturating_add(extra) > limits.memory_per_domain
        || total_usage(store, conns).saturating_add(extra) > limits.memory_total
}

/// The memory `c`'s domain makes the service hold: its nodes, its open
/// transactions, its watches, its queued output and its partial input.
fn usage(store: &Store, c: &Connection) -> usize {
    let tx: usize = c.transactions.values().map(Transaction::bytes).sum();
    store
        .owned_bytes(c.domid)
        .saturating_add(tx)
        .saturating_add(c.watch_bytes)
        .saturating_add(c.out.bytes())
        .saturating_add(c.input.buffered())
}

/// What a watch on `path` with `token` costs.
fn watch_cost(path: &str, token: &[u8]) -> usize {
    path.len() + token.len() + WATCH_OVERHEAD
}

/// An upper bound of the memory store request `op` with `payload` can add
/// for `who`: in the shared store (`tx` `None`) only writes, directory
/// creations and permission changes add (a new value, and a node for each
/// missing ancestor, each path no longer than the request's plus a home
/// prefix); in a transaction's copy every request adds journal entries
/// for what it looks at, and a removal one for each node beneath. Checked
/// against the memory quota before the request runs, so no request can
/// take a domain far past it.
fn growth_bound(limits: &Limits, who: Who, tx: Option<&Store>, op: u32, payload: &[u8]) -> usize {
    if tx.is_none() && !matches!(op, XS_WRITE | XS_MKDIR | XS_SET_PERMS) {
        return 0;
    }
    let raw = payload.split(|&b| b == 0).next().unwrap_or(&[]);
    let path_len = raw.len() + HOME_PREFIX_MAX;
    let components = raw.iter().filter(|&&b| b == b'/').count() + 4;
    let per_node =
        path_len + NODE_OVERHEAD + 2 * JOURNAL_ENTRY_COST + 16 + 8 * limits.perms_per_node;
    let mut bound = (components + 1)
        .saturating_mul(per_node)
        .saturating_add(payload.len())
        .saturating_add(limits.node_size);
    if op == XS_RM
        && let Some(s) = tx
        && let Ok(c) = path::canonicalize(raw, who.domid, false, Some(limits.path_len))
    {
        let (nodes, path_bytes) = s.subtree_size(&c.path);
        bound = bound
            .saturating_add(path_bytes.saturating_mul(4))
            .saturating_add(nodes.saturating_mul(3 * JOURNAL_ENTRY_COST));
    }
    bound
}

/// An INTRODUCE frame number: decimal, optionally signed (Xen documents it
/// as signed); negative values are refused.
fn parse_mfn(raw: &[u8]) -> Result<u64, Errno> {
    let digits = raw.strip_prefix(b"-").map_or(Ok(raw), |d| {
        // "-0" is the only negative spelling of a valid frame.
        if d.iter().all(|&b| b == b'0') && !d.is_empty() {
            Ok(d)
        } else {
            Err(Errno::EINVAL)
        }
    })?;
    path::parse_decimal(digits, 19).ok_or(Errno::EINVAL)
}
