//! Xenbus: the xenstore conventions both ends of a split device follow.
//!
//! A front-end in domain F keeps its device directories under its home,
//! `device/<type>/<devid>` (relative paths are resolved against the caller's
//! home, `/local/domain/<domid>`); the back-end in domain B keeps its own
//! under `backend/<type>/<F>/<devid>` in B's home. Each directory names the
//! other (`backend` and `backend-id` in the front-end's, `frontend` and
//! `frontend-id` in the back-end's), holds a `state` node
//! ([`XenbusState`] as decimal text) and the end's parameters and
//! `feature-*` flags. The ends move through the states in step, each waiting
//! for the other: the back-end publishes its features and goes to InitWait,
//! the front-end publishes its ring and port and goes to Initialised, the
//! back-end connects and goes to Connected, then so does the front-end.
//!
//! The helpers here are generic over [`Store`], which the ring client
//! ([`crate::xenstore::Client`]) implements and which a store running in the
//! same domain can implement directly:
//!
//! ```no_run
//! use pv_guest_kernel::xenbus::{self, XenbusState};
//! # fn demo() -> Result<(), pv_guest_kernel::Errno> {
//! let mut xs = pv_guest_kernel::xenstore::connect()?;
//! for dev in xenbus::frontend_devices(&mut xs, "vbd")? {
//!     let be = xenbus::read_backend(&mut xs, &dev.dir)?; // its path and DomId
//!     xenbus::wait_for_state(&mut xs, &be.path, XenbusState::InitWait)?;
//!     xenbus::write_nodes(&mut xs, &dev.dir, &[("ring-ref", "8"), ("event-channel", "5")])?;
//!     xenbus::switch_state(&mut xs, &dev.dir, XenbusState::Initialised)?;
//!     xenbus::wait_for_state(&mut xs, &be.path, XenbusState::Connected)?;
//! }
//! # Ok(())
//! # }
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use guest_abi::errno::Errno;
pub use guest_abi::io::xenbus::XenbusState;
use guest_abi::types::DomId;

use crate::xenstore::{Client, NO_TX, RingPage, Transport, WatchEvent};

/// How often [`transaction`] retries a transaction whose commit found a
/// conflict (`EAGAIN`) before giving up with `EAGAIN`.
pub const TRANSACTION_RETRIES: usize = 16;

/// The store operations xenbus needs. `tx` is a transaction id from
/// [`transaction_start`](Store::transaction_start), or
/// [`NO_TX`].
pub trait Store {
    /// Reads the value of `path`.
    fn read(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, Errno>;
    /// Writes `value` to `path`, creating it and missing parents.
    fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), Errno>;
    /// Creates `path` (empty) if it does not exist.
    fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), Errno>;
    /// Removes `path` and everything below it.
    fn rm(&mut self, tx: u32, path: &str) -> Result<(), Errno>;
    /// The names of the children of `path`.
    fn directory(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Errno>;
    /// Watches `path` and below; events carry `token`. A new watch fires once
    /// straight away.
    fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno>;
    /// Removes a watch; its pending events are dropped.
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno>;
    /// Blocks until an event for `token` arrives and returns it; events for
    /// other tokens are kept for their own waiters.
    fn wait_watch_event(&mut self, token: &str) -> Result<WatchEvent, Errno>;
    /// Starts a transaction; returns its id.
    fn transaction_start(&mut self) -> Result<u32, Errno>;
    /// Ends transaction `tx`; a commit fails with `EAGAIN` on a conflict.
    fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), Errno>;
}

impl<P: RingPage, T: Transport> Store for Client<P, T> {
    fn read(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, Errno> {
        self.read_tx(tx, path)
    }
    fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), Errno> {
        self.write_tx(tx, path, value)
    }
    fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), Errno> {
        self.mkdir_tx(tx, path)
    }
    fn rm(&mut self, tx: u32, path: &str) -> Result<(), Errno> {
        self.rm_tx(tx, path)
    }
    fn directory(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Errno> {
        self.directory_tx(tx, path)
    }
    fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        Client::watch(self, path, token)
    }
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        Client::unwatch(self, path, token)
    }
    fn wait_watch_event(&mut self, token: &str) -> Result<WatchEvent, Errno> {
        Client::wait_watch_event(self, token)
    }
    fn transaction_start(&mut self) -> Result<u32, Errno> {
        Client::transaction_start(self)
    }
    fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), Errno> {
        Client::transaction_end(self, tx, commit)
    }
}

/// `dir/key` (just `key` if `dir` is empty).
#[must_use]
pub fn join(dir: &str, key: &str) -> String {
    if dir.is_empty() {
        String::from(key)
    } else {
        format!("{}/{key}", dir.trim_end_matches('/'))
    }
}

/// A front-end's directory for device `devid` of `ty`, relative to its home.
#[must_use]
pub fn frontend_dir(ty: &str, devid: &str) -> String {
    format!("device/{ty}/{devid}")
}

/// A back-end's directory for device `devid` of `ty` in domain `frontend`,
/// relative to the back-end's home.
#[must_use]
pub fn backend_dir(ty: &str, frontend: DomId, devid: &str) -> String {
    format!("backend/{ty}/{}/{devid}", frontend.0)
}

/// A device as its front-end sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendDevice {
    /// The device id (the directory's name).
    pub devid: String,
    /// Its directory, `device/<type>/<devid>`.
    pub dir: String,
}

/// A device as its back-end sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendDevice {
    /// The front-end's domain.
    pub frontend_domid: DomId,
    /// The device id.
    pub devid: String,
    /// Its directory, `backend/<type>/<frontend_domid>/<devid>`.
    pub dir: String,
}

/// The children of `path`, none if it does not exist.
fn children<S: Store + ?Sized>(s: &mut S, path: &str) -> Result<Vec<String>, Errno> {
    match s.directory(NO_TX, path) {
        Err(Errno::ENOENT) => Ok(Vec::new()),
        r => r,
    }
}

/// The devices of type `ty` this domain is the front-end of (the
/// directories under `device/<ty>`), in the store's order.
pub fn frontend_devices<S: Store + ?Sized>(
    s: &mut S,
    ty: &str,
) -> Result<Vec<FrontendDevice>, Errno> {
    Ok(children(s, &format!("device/{ty}"))?
        .into_iter()
        .map(|devid| FrontendDevice {
            dir: frontend_dir(ty, &devid),
            devid,
        })
        .collect())
}

/// The devices of type `ty` this domain is the back-end of, for every
/// front-end domain (`backend/<ty>/<domid>/<devid>`). Entries whose domain
/// name is not a domain id are skipped.
pub fn backend_devices<S: Store + ?Sized>(
    s: &mut S,
    ty: &str,
) -> Result<Vec<BackendDevice>, Errno> {
    let mut out = Vec::new();
    for dom in children(s, &format!("backend/{ty}"))? {
        let Some(domid) = parse_u64(dom.as_bytes())
            .and_then(|d| u16::try_from(d).ok())
            .map(DomId)
        else {
            continue;
        };
        for devid in children(s, &format!("backend/{ty}/{dom}"))? {
            out.push(BackendDevice {
                frontend_domid: domid,
                dir: backend_dir(ty, domid, &devid),
                devid,
            });
        }
    }
    Ok(out)
}

/// Decimal text (surrounding whitespace and a trailing NUL allowed).
fn parse_u64(raw: &[u8]) -> Option<u64> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    core::str::from_utf8(raw).ok()?.trim().parse().ok()
}

/// The state in `dir/state`; an absent node or one that does not hold a
/// state reads as [`XenbusState::Unknown`].
pub fn read_state<S: Store + ?Sized>(s: &mut S, dir: &str) -> Result<XenbusState, Errno> {
    read_state_tx(s, NO_TX, dir)
}

fn read_state_tx<S: Store + ?Sized>(s: &mut S, tx: u32, dir: &str) -> Result<XenbusState, Errno> {
    match s.read(tx, &join(dir, "state")) {
        Ok(v) => Ok(XenbusState::parse(&v).unwrap_or(XenbusState::Unknown)),
        Err(Errno::ENOENT) => Ok(XenbusState::Unknown),
        Err(e) => Err(e),
    }
}

/// Writes `state` to `dir/state`.
pub fn write_state<S: Store + ?Sized>(
    s: &mut S,
    tx: u32,
    dir: &str,
    state: XenbusState,
) -> Result<(), Errno> {
    s.write(tx, &join(dir, "state"), state.as_text().as_bytes())
}

/// Moves this end to `state`: writes it unless `dir/state` already holds it
/// (in a transaction, so a concurrent change is not overwritten unseen).
pub fn switch_state<S: Store + ?Sized>(
    s: &mut S,
    dir: &str,
    state: XenbusState,
) -> Result<(), Errno> {
    transaction(s, |s, tx| {
        if read_state_tx(s, tx, dir)? == state {
            return Ok(());
        }
        write_state(s, tx, dir, state)
    })
}

/// How a peer's state relates to the state one waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateCheck {
    /// The peer is there (or past it, within the same phase).
    Reached,
    /// Not yet: keep waiting.
    Pending,
    /// The peer is leaving: it will not get there.
    Failed,
}

/// Phases of the state machine: setting up, closing, reconfiguring.
fn phase(s: XenbusState) -> u8 {
    use XenbusState as S;
    match s {
        S::Unknown => 0,
        S::Initialising | S::InitWait | S::Initialised | S::Connected => 1,
        S::Closing | S::Closed => 2,
        S::Reconfiguring | S::Reconfigured => 3,
    }
}

/// Whether a peer in state `current` has reached `target`. A peer may skip
/// states (InitWait straight to Connected): any state at or past the target
/// within the same phase counts. Waiting for a set-up or reconfiguration
/// state fails once the peer is Closing or Closed. Waiting for Closing or
/// Closed also succeeds when the state node is gone (`Unknown`: the peer's
/// directory was removed). Waiting for `Unknown` succeeds at once.
#[must_use]
pub fn check_state(current: XenbusState, target: XenbusState) -> StateCheck {
    let (pc, pt) = (phase(current), phase(target));
    if pt == 0 || (pc == pt && current >= target) || (pt == 2 && pc == 0) {
        StateCheck::Reached
    } else if pc == 2 && pt != 2 {
        StateCheck::Failed
    } else {
        StateCheck::Pending
    }
}

/// Tokens of the watches [`wait_for_state`] sets, unique per call.
static WAIT_TOKENS: AtomicU32 = AtomicU32::new(0);

/// Blocks until the peer whose directory is `dir` reaches `target` (see
/// [`check_state`] for skipped states), watching `dir/state`. Returns the
/// state it found; `ENOTCONN` if the peer began closing instead. When
/// waiting for Closing or Closed, a state node that can no longer be read
/// (`ENOENT`, or `EACCES` once the peer's directory is removed) counts as the
/// peer gone. Errors of the store (including [`Store::wait_watch_event`]'s)
/// end the wait; the watch is removed either way.
pub fn wait_for_state<S: Store + ?Sized>(
    s: &mut S,
    dir: &str,
    target: XenbusState,
) -> Result<XenbusState, Errno> {
    let node = join(dir, "state");
    let token = format!(
        "xenbus-wait-{}",
        WAIT_TOKENS.fetch_add(1, Ordering::Relaxed)
    );
    s.watch(&node, &token)?;
    let result = loop {
        let current = match read_state(s, dir) {
            Ok(st) => st,
            // A removed node reads as EACCES when its nearest remaining
            // ancestor is not readable: when waiting for the close, that is
            // the peer gone.
            Err(Errno::EACCES) if phase(target) == 2 => XenbusState::Unknown,
            Err(e) => break Err(e),
        };
        match check_state(current, target) {
            StateCheck::Reached => break Ok(current),
            StateCheck::Failed => break Err(Errno::ENOTCONN),
            StateCheck::Pending => {}
        }
        if let Err(e) = s.wait_watch_event(&token) {
            break Err(e);
        }
    };
    // Best effort: the outcome is already known.
    let _ = s.unwatch(&node, &token);
    result
}

/// The unsigned integer in `dir/key`, or `default` if the node is absent or
/// does not hold a decimal number (as Xen's front- and back-ends read
/// optional parameters). Other store errors are returned.
pub fn read_u64_or<S: Store + ?Sized>(
    s: &mut S,
    dir: &str,
    key: &str,
    default: u64,
) -> Result<u64, Errno> {
    match s.read(NO_TX, &join(dir, key)) {
        Ok(v) => Ok(parse_u64(&v).unwrap_or(default)),
        Err(Errno::ENOENT) => Ok(default),
        Err(e) => Err(e),
    }
}

/// The unsigned integer in `dir/key`: `ENOENT` if absent, `EINVAL` if it is
/// not a decimal number.
pub fn read_u64<S: Store + ?Sized>(s: &mut S, dir: &str, key: &str) -> Result<u64, Errno> {
    parse_u64(&s.read(NO_TX, &join(dir, key))?).ok_or(Errno::EINVAL)
}

/// The flag in `dir/key`: a nonzero number is true, zero false; absent or
/// unreadable as a number gives `default`.
pub fn read_bool_or<S: Store + ?Sized>(
    s: &mut S,
    dir: &str,
    key: &str,
    default: bool,
) -> Result<bool, Errno> {
    Ok(read_u64_or(s, dir, key, u64::from(default))? != 0)
}

/// Whether the end whose directory is `dir` offers `feature` (the node
/// `dir/feature-<feature>`, e.g. `"persistent"`); absent means no.
pub fn has_feature<S: Store + ?Sized>(s: &mut S, dir: &str, feature: &str) -> Result<bool, Errno> {
    read_bool_or(s, dir, &format!("feature-{feature}"), false)
}

/// Runs `f` in a transaction and commits it, starting over (up to
/// [`TRANSACTION_RETRIES`] times) when the commit, or an operation in `f`,
/// fails with `EAGAIN`. Any other error aborts the transaction and is
/// returned.
pub fn transaction<S, R, F>(s: &mut S, mut f: F) -> Result<R, Errno>
where
    S: Store + ?Sized,
    F: FnMut(&mut S, u32) -> Result<R, Errno>,
{
    for _ in 0..=TRANSACTION_RETRIES {
        let tx = s.transaction_start()?;
        let r = match f(s, tx) {
            Ok(r) => r,
            Err(e) => {
                let _ = s.transaction_end(tx, false);
                if e == Errno::EAGAIN {
                    continue;
                }
                return Err(e);
            }
        };
        match s.transaction_end(tx, true) {
            Ok(()) => return Ok(r),
            Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EAGAIN)
}

/// Writes every `(key, value)` under `dir` in one transaction (retried on
/// conflicts, see [`transaction`]): the peer sees all of them or none.
pub fn write_nodes<S: Store + ?Sized>(
    s: &mut S,
    dir: &str,
    nodes: &[(&str, &str)],
) -> Result<(), Errno> {
    transaction(s, |s, tx| {
        for (key, value) in nodes {
            s.write(tx, &join(dir, key), value.as_bytes())?;
        }
        Ok(())
    })
}

/// The other end of a device, as named in this end's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's device directory (an absolute path).
    pub path: String,
    /// The peer's domain.
    pub domid: DomId,
}

fn read_peer<S: Store + ?Sized>(
    s: &mut S,
    dir: &str,
    path_key: &str,
    id_key: &str,
) -> Result<Peer, Errno> {
    let raw = s.read(NO_TX, &join(dir, path_key))?;
    let path = String::from_utf8(raw.strip_suffix(&[0]).unwrap_or(&raw).to_vec())
        .map_err(|_| Errno::EINVAL)?;
    if path.is_empty() {
        return Err(Errno::EINVAL);
    }
    let domid = DomId(u16::try_from(read_u64(s, dir, id_key)?).map_err(|_| Errno::EINVAL)?);
    Ok(Peer { path, domid })
}

/// The back-end of the device whose front-end directory is `dir` (its
/// `backend` and `backend-id` nodes). `ENOENT` if either is missing,
/// `EINVAL` if malformed.
pub fn read_backend<S: Store + ?Sized>(s: &mut S, dir: &str) -> Result<Peer, Errno> {
    read_peer(s, dir, "backend", "backend-id")
}

/// The front-end of the device whose back-end directory is `dir` (its
/// `frontend` and `frontend-id` nodes). `ENOENT` if either is missing,
/// `EINVAL` if malformed.
pub fn read_frontend<S: Store + ?Sized>(s: &mut S, dir: &str) -> Result<Peer, Errno> {
    read_peer(s, dir, "frontend", "frontend-id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::sim::{self, Config, Server, SimClient};
    use XenbusState as S;
    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::rc::Rc;
    use alloc::string::ToString;
    use alloc::vec;
    use core::cell::RefCell;
    use guest_abi::io::xenstore::{XS_MKDIR, XS_TRANSACTION_START, XS_WRITE, XsdSockmsg};
    use zerocopy::FromBytes;

    const BE: &str = "/local/domain/0/backend/vif/1/0";

    /// A front-end client (domain 1) and a back-end directory it may read.
    fn frontend() -> (SimClient, Rc<RefCell<Server>>) {
        let (xs, srv) = sim::client(Config::default());
        {
            let mut s = srv.borrow_mut();
            let mut p = BE.as_bytes().to_vec();
            p.push(0);
            s.admin(XS_MKDIR, 0, &p).unwrap();
            s.admin_set_perms(BE, &["n0", "r1"]);
        }
        (xs, srv)
    }

    fn set_be_state(s: &mut Server, st: XenbusState) {
        s.admin_write(&join(BE, "state"), st.as_text());
    }

    #[test]
    fn check_state_tolerates_skips_and_fails_on_close() {
        use StateCheck::*;
        let all = [
            S::Unknown,
            S::Initialising,
            S::InitWait,
            S::Initialised,
            S::Connected,
            S::Closing,
            S::Closed,
            S::Reconfiguring,
            S::Reconfigured,
        ];
        for cur in all {
            assert_eq!(check_state(cur, S::Unknown), Reached);
        }
        assert_eq!(check_state(S::Connected, S::InitWait), Reached);
        assert_eq!(check_state(S::InitWait, S::InitWait), Reached);
        assert_eq!(check_state(S::Initialising, S::InitWait), Pending);
        assert_eq!(check_state(S::Unknown, S::Connected), Pending);
        assert_eq!(check_state(S::Initialised, S::Connected), Pending);
        assert_eq!(check_state(S::Reconfiguring, S::Connected), Pending);
        assert_eq!(check_state(S::Closing, S::Connected), Failed);
        assert_eq!(check_state(S::Closed, S::InitWait), Failed);
        assert_eq!(check_state(S::Closing, S::Closed), Pending);
        assert_eq!(check_state(S::Closed, S::Closing), Reached);
        assert_eq!(check_state(S::Unknown, S::Closed), Reached);
        assert_eq!(check_state(S::Connected, S::Closed), Pending);
        assert_eq!(check_state(S::Reconfigured, S::Reconfiguring), Reached);
        assert_eq!(check_state(S::Closed, S::Reconfigured), Failed);
    }

    #[test]
    fn wait_for_state_follows_the_peer() {
        for skip in [false, true] {
            let (mut xs, srv) = frontend();
            set_be_state(&mut srv.borrow_mut(), S::Initialising);
            // A watch of the caller's own: its events must survive the wait.
            xs.watch("mine", "own").unwrap();
            {
                let mut s = srv.borrow_mut();
                if !skip {
                    s.idle_steps
                        .push_back(Box::new(|s| set_be_state(s, S::InitWait)));
                    s.idle_steps
                        .push_back(Box::new(|s| s.admin_write("/local/domain/1/mine/x", "")));
                }
                s.idle_steps
                    .push_back(Box::new(|s| set_be_state(s, S::Connected)));
            }
            assert_eq!(
                wait_for_state(&mut xs, BE, S::Connected),
                Ok(S::Connected),
                "skip {skip}"
            );
            let conn = srv.borrow().conn;
            assert_eq!(
                srv.borrow().xs.connection(conn).unwrap().watch_count(),
                1,
                "only the caller's watch is left"
            );
            assert_eq!(xs.poll_watch_event().unwrap().unwrap().token, "own");
            if !skip {
                assert_eq!(xs.poll_watch_event().unwrap().unwrap().path, "mine/x");
            }
            assert_eq!(xs.poll_watch_event().unwrap(), None);
            // Already there: no waiting at all.
            assert_eq!(wait_for_state(&mut xs, BE, S::InitWait), Ok(S::Connected));
        }
    }

    #[test]
    fn wait_for_state_fails_when_the_peer_closes() {
        let (mut xs, srv) = frontend();
        set_be_state(&mut srv.borrow_mut(), S::InitWait);
        srv.borrow_mut()
            .idle_steps
            .push_back(Box::new(|s| set_be_state(s, S::Closing)));
        assert_eq!(
            wait_for_state(&mut xs, BE, S::Connected),
            Err(Errno::ENOTCONN)
        );
        // ... and waiting for the close then succeeds, also when the peer's
        // directory disappears.
        srv.borrow_mut()
            .idle_steps
            .push_back(Box::new(|s| s.admin_rm(BE)));
        assert_eq!(wait_for_state(&mut xs, BE, S::Closed), Ok(S::Unknown));
        let conn = srv.borrow().conn;
        assert_eq!(srv.borrow().xs.connection(conn).unwrap().watch_count(), 0);
        // A peer that never moves: the transport's error comes back, and the
        // watch is still removed.
        assert_eq!(
            wait_for_state(&mut xs, "device/vif/9", S::Connected),
            Err(Errno::ETIMEDOUT)
        );
        assert_eq!(srv.borrow().xs.connection(conn).unwrap().watch_count(), 0);
    }

    #[test]
    fn state_nodes() {
        let (mut xs, _srv) = frontend();
        let dir = frontend_dir("vif", "0");
        assert_eq!(read_state(&mut xs, &dir), Ok(S::Unknown));
        switch_state(&mut xs, &dir, S::Initialising).unwrap();
        assert_eq!(xs.read("device/vif/0/state").unwrap(), b"1");
        switch_state(&mut xs, &dir, S::Initialising).unwrap();
        switch_state(&mut xs, &dir, S::Initialised).unwrap();
        assert_eq!(read_state(&mut xs, &dir), Ok(S::Initialised));
        write_state(&mut xs, NO_TX, &dir, S::Connected).unwrap();
        assert_eq!(read_state(&mut xs, &dir), Ok(S::Connected));
        xs.write("device/vif/0/state", b"garbage").unwrap();
        assert_eq!(read_state(&mut xs, &dir), Ok(S::Unknown));
        assert_eq!(
            read_state(&mut xs, "/local/domain/0/private"),
            Err(Errno::EACCES)
        );
    }

    #[test]
    fn features_and_integers() {
        let (mut xs, srv) = frontend();
        {
            let mut s = srv.borrow_mut();
            for (k, v) in [
                ("feature-on", "1"),
                ("feature-off", "0"),
                ("feature-junk", "yes"),
                ("feature-many", " 7\0"),
                ("ring-page-order", "3"),
                ("backend-id", "0"),
            ] {
                s.admin_write(&join(BE, k), v);
            }
        }
        assert_eq!(has_feature(&mut xs, BE, "on"), Ok(true));
        assert_eq!(has_feature(&mut xs, BE, "off"), Ok(false));
        assert_eq!(has_feature(&mut xs, BE, "junk"), Ok(false));
        assert_eq!(has_feature(&mut xs, BE, "many"), Ok(true));
        assert_eq!(has_feature(&mut xs, BE, "absent"), Ok(false));
        assert_eq!(read_bool_or(&mut xs, BE, "feature-absent", true), Ok(true));
        assert_eq!(read_bool_or(&mut xs, BE, "feature-junk", true), Ok(true));
        assert_eq!(read_u64_or(&mut xs, BE, "ring-page-order", 0), Ok(3));
        assert_eq!(read_u64_or(&mut xs, BE, "max-queues", 1), Ok(1));
        assert_eq!(read_u64(&mut xs, BE, "ring-page-order"), Ok(3));
        assert_eq!(read_u64(&mut xs, BE, "max-queues"), Err(Errno::ENOENT));
        assert_eq!(read_u64(&mut xs, BE, "feature-junk"), Err(Errno::EINVAL));
        // Where the caller may not look, the error is not hidden by a default.
        assert_eq!(
            has_feature(&mut xs, "/local/domain/0/x", "on"),
            Err(Errno::EACCES)
        );
    }

    #[test]
    fn enumeration() {
        let (mut xs, _srv) = frontend();
        assert_eq!(frontend_devices(&mut xs, "vif"), Ok(vec![]));
        xs.write("device/vif/0/state", b"1").unwrap();
        xs.write("device/vif/1/state", b"1").unwrap();
        xs.write("device/vbd/51712/state", b"1").unwrap();
        let mut devs = frontend_devices(&mut xs, "vif").unwrap();
        devs.sort_by(|a, b| a.devid.cmp(&b.devid));
        assert_eq!(
            devs,
            [
                FrontendDevice {
                    devid: "0".into(),
                    dir: "device/vif/0".into()
                },
                FrontendDevice {
                    devid: "1".into(),
                    dir: "device/vif/1".into()
                },
            ]
        );

        let (mut be, _srv) = sim::client(Config {
            domid: 0,
            privileged: true,
            ..Config::default()
        });
        assert_eq!(backend_devices(&mut be, "vbd"), Ok(vec![]));
        for p in [
            "backend/vbd/1/51712/state",
            "backend/vbd/2/768/state",
            "backend/vbd/2/832/state",
            "backend/vbd/junk/1/state",
            "backend/vbd/99999/1/state",
        ] {
            be.write(p, b"1").unwrap();
        }
        let mut devs = backend_devices(&mut be, "vbd").unwrap();
        devs.sort_by(|a, b| (a.frontend_domid, &a.devid).cmp(&(b.frontend_domid, &b.devid)));
        let want: Vec<(u16, &str, &str)> = vec![
            (1, "51712", "backend/vbd/1/51712"),
            (2, "768", "backend/vbd/2/768"),
            (2, "832", "backend/vbd/2/832"),
        ];
        let got: Vec<(u16, &str, &str)> = devs
            .iter()
            .map(|d| (d.frontend_domid.0, d.devid.as_str(), d.dir.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn peers() {
        let (mut xs, srv) = frontend();
        let dir = frontend_dir("vif", "0");
        assert_eq!(read_backend(&mut xs, &dir), Err(Errno::ENOENT));
        write_nodes(&mut xs, &dir, &[("backend", BE), ("backend-id", "0")]).unwrap();
        assert_eq!(
            read_backend(&mut xs, &dir),
            Ok(Peer {
                path: BE.into(),
                domid: DomId(0)
            })
        );
        xs.write("device/vif/0/backend-id", b"70000").unwrap();
        assert_eq!(read_backend(&mut xs, &dir), Err(Errno::EINVAL));
        xs.write("device/vif/0/backend", b"").unwrap();
        assert_eq!(read_backend(&mut xs, &dir), Err(Errno::EINVAL));
        srv.borrow_mut()
            .admin_write(&join(BE, "frontend"), "/local/domain/1/device/vif/0");
        srv.borrow_mut().admin_write(&join(BE, "frontend-id"), "1");
        assert_eq!(
            read_frontend(&mut xs, BE),
            Ok(Peer {
                path: "/local/domain/1/device/vif/0".into(),
                domid: DomId(1)
            })
        );
    }

    #[test]
    fn write_nodes_retries_a_conflicting_transaction() {
        let (mut xs, srv) = frontend();
        let starts = Rc::new(RefCell::new(0));
        let seen = starts.clone();
        let mut stream = Vec::new();
        srv.borrow_mut().before_receive = Some(Box::new(move |s, bytes| {
            stream.extend_from_slice(bytes);
            while let Ok((h, rest)) = XsdSockmsg::read_from_prefix(&stream) {
                if rest.len() < h.len as usize {
                    break;
                }
                stream.drain(..16 + h.len as usize);
                if h.type_ == XS_TRANSACTION_START {
                    *seen.borrow_mut() += 1;
                }
                // Someone else writes a node the first attempt also writes.
                if h.type_ == XS_WRITE && h.tx_id != 0 && *seen.borrow() == 1 {
                    s.admin_write("/local/domain/1/device/vif/0/ring-ref", "stale");
                }
            }
            true
        }));
        let dir = frontend_dir("vif", "0");
        write_nodes(
            &mut xs,
            &dir,
            &[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("request-rx-copy", "1"),
            ],
        )
        .unwrap();
        assert_eq!(*starts.borrow(), 2);
        assert_eq!(xs.read("device/vif/0/ring-ref").unwrap(), b"8");
        assert_eq!(xs.read("device/vif/0/event-channel").unwrap(), b"5");
        assert_eq!(read_u64(&mut xs, &dir, "request-rx-copy"), Ok(1));
    }

    /// An in-process store (what a service domain would provide), whose
    /// commits conflict a set number of times.
    #[derive(Default)]
    struct MapStore {
        nodes: BTreeMap<String, Vec<u8>>,
        pending: Vec<(String, Vec<u8>)>,
        conflicts: usize,
        starts: usize,
    }

    impl Store for MapStore {
        fn read(&mut self, _tx: u32, path: &str) -> Result<Vec<u8>, Errno> {
            self.nodes.get(path).cloned().ok_or(Errno::ENOENT)
        }
        fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), Errno> {
            if tx == NO_TX {
                self.nodes.insert(path.to_string(), value.to_vec());
            } else {
                self.pending.push((path.to_string(), value.to_vec()));
            }
            Ok(())
        }
        fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), Errno> {
            self.write(tx, path, b"")
        }
        fn rm(&mut self, _tx: u32, path: &str) -> Result<(), Errno> {
            self.nodes.remove(path).map(drop).ok_or(Errno::ENOENT)
        }
        fn directory(&mut self, _tx: u32, path: &str) -> Result<Vec<String>, Errno> {
            let prefix = format!("{path}/");
            let mut names: Vec<String> = self
                .nodes
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|rest| rest.split('/').next().unwrap_or("").to_string())
                .collect();
            names.dedup();
            Ok(names)
        }
        fn watch(&mut self, _path: &str, _token: &str) -> Result<(), Errno> {
            Ok(())
        }
        fn unwatch(&mut self, _path: &str, _token: &str) -> Result<(), Errno> {
            Ok(())
        }
        fn wait_watch_event(&mut self, _token: &str) -> Result<WatchEvent, Errno> {
            Err(Errno::ETIMEDOUT)
        }
        fn transaction_start(&mut self) -> Result<u32, Errno> {
            self.starts += 1;
            self.pending.clear();
            Ok(self.starts as u32)
        }
        fn transaction_end(&mut self, _tx: u32, commit: bool) -> Result<(), Errno> {
            let pending = core::mem::take(&mut self.pending);
            if !commit {
                return Ok(());
            }
            if self.conflicts > 0 {
                self.conflicts -= 1;
                return Err(Errno::EAGAIN);
            }
            self.nodes.extend(pending);
            Ok(())
        }
    }

    #[test]
    fn transactions_retry_a_bounded_number_of_times() {
        let mut s = MapStore {
            conflicts: 3,
            ..MapStore::default()
        };
        write_nodes(&mut s, "d", &[("a", "1"), ("b", "2")]).unwrap();
        assert_eq!(s.starts, 4);
        assert_eq!(read_u64(&mut s, "d", "b"), Ok(2));
        let mut s = MapStore {
            conflicts: usize::MAX,
            ..MapStore::default()
        };
        assert_eq!(write_nodes(&mut s, "d", &[("a", "1")]), Err(Errno::EAGAIN));
        assert_eq!(s.starts, TRANSACTION_RETRIES + 1);
        assert!(s.nodes.is_empty());
        // Other errors end it at once, aborted.
        let r: Result<(), Errno> = transaction(&mut s, |s, tx| {
            s.write(tx, "x", b"1")?;
            Err(Errno::EACCES)
        });
        assert_eq!(r, Err(Errno::EACCES));
        assert!(s.nodes.is_empty());
        // The helpers work on any store.
        s.write(NO_TX, "device/vbd/768/state", b"4").unwrap();
        assert_eq!(frontend_devices(&mut s, "vbd").unwrap().len(), 1);
        assert_eq!(read_state(&mut s, "device/vbd/768"), Ok(S::Connected));
        assert_eq!(
            wait_for_state(&mut s, "device/vbd/768", S::Connected),
            Ok(S::Connected)
        );
        assert_eq!(join("a/", "b"), "a/b");
        assert_eq!(join("", "b"), "b");
    }
}
