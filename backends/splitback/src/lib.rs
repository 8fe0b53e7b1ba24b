//! The back-end half of the split-driver framework: everything a back-end in
//! the service domain does that is not about its device.
//!
//! A device's back-end implements [`Backend`]: what it publishes, how it
//! checks a front-end, how it serves a connected ring. [`Devices`] does the
//! rest, the same for every device, as Xen's xenbus back-end code does:
//!
//! - the toolstack's part ([`Devices::add`]): both xenstore directories,
//!   each naming the other and readable by the other side, the back-end's
//!   nodes, then `InitWait`;
//! - the handshake ([`Devices::step`]): follows the front-end's `state`
//!   (`Initialised` or `Connected`: connect; `Closing`: let go; `Closed`:
//!   close; `Initialising` after a close: start again in `InitWait`);
//! - connecting: reads and checks the front-end's `*ring-ref` and
//!   `event-channel` nodes, takes grant-mapping slots from a bounded
//!   [`Slots`] pool, maps each ring page and binds the event channel
//!   (through [`Platform`]), and undoes all of it on any failure;
//! - serving ([`Devices::serve`]): one bounded call of the device per pass,
//!   an event to the front-end when the device asks for one; a broken ring
//!   disconnects that front-end alone (`Closing`, then it is followed to
//!   `Closed` and never served again);
//! - teardown: ring pages unmapped (dropped), slots given back, port closed,
//!   when the front-end closes, breaks its ring, or its domain dies.
//!
//! Everything a front-end writes is hostile: node values are parsed
//! strictly and a bad one closes that device only; nothing here panics on
//! what a front-end does. The crate is safe code over three traits
//! ([`Store`], [`Platform`], [`Backend`]), so the whole state machine is
//! tested on the host. The service domain implements `Store` and `Platform`
//! (`backends/service`).
//!
//! Allocation: [`Devices::add`], [`Devices::step`] and
//! [`Devices::domain_died`] allocate (paths, node values, at most a few KiB
//! per device); the caller runs them only when its heap can give that
//! (the service domain's heap gate). [`Devices::serve`] allocates nothing
//! itself; a [`Backend::serve`] must not allocate per request either.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use guest_abi::errno::Errno;
pub use guest_abi::io::ring::SharedPage;
pub use guest_abi::io::xenbus::XenbusState;

/// Front-end node: grant reference of a one-page ring (the usual name).
pub const KEY_RING_REF: &str = "ring-ref";
/// Front-end node: the event channel port it allocated for the back-end.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";

/// The store operations the framework needs, as the service domain's own
/// (privileged) xenstore connection offers them.
pub trait Store {
    /// Reads `path`.
    ///
    /// # Errors
    /// The store's error (`ENOENT` when absent).
    fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno>;
    /// Writes `value` to `path`, creating it.
    ///
    /// # Errors
    /// The store's error.
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno>;
    /// Sets `path`'s permissions from their wire form (`b"n0\0r1\0"`: owner
    /// first, with what everyone else may do, then one entry per domain).
    ///
    /// # Errors
    /// The store's error.
    fn set_perms(&mut self, path: &str, perms: &[u8]) -> Result<(), Errno>;
}

/// The service domain's kernel services the framework needs.
pub trait Platform {
    /// A ring page mapped from a front-end by grant; dropping it unmaps it.
    type Page: SharedPage;
    /// Maps grant `gref` of domain `dom` at grant-mapping slot `slot` (one
    /// of [`Slots`]'). The hypervisor checks the grant is `dom`'s and meant
    /// for us.
    ///
    /// # Errors
    /// Why not, as text for the log.
    fn map_ring(&mut self, dom: u16, gref: u32, slot: u64) -> Result<Self::Page, String>;
    /// Binds to `dom`'s unbound port `port`; returns our port.
    ///
    /// # Errors
    /// Why not, as text for the log.
    fn bind(&mut self, dom: u16, port: u32) -> Result<u32, String>;
    /// Sends an event on our port `port`.
    fn notify(&mut self, port: u32);
    /// Closes our port `port`.
    fn unbind(&mut self, port: u32);
    /// Prints one line on the service domain's console (formatted straight
    /// to it: logging allocates nothing).
    fn log(&mut self, line: fmt::Arguments<'_>);
}

/// What one [`Backend::serve`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Send the front-end an event (it asked to hear of these responses).
    pub notify: bool,
    /// The call stopped at its bound with requests left: serve again soon,
    /// without waiting for an event.
    pub more: bool,
}

/// A front-end's directory as the back-end sees it when connecting: the
/// nodes it published (those the framework and [`Backend::frontend_keys`]
/// name, when present), their text as written.
#[derive(Debug)]
pub struct Frontend<'a> {
    /// The front-end's domain.
    pub domid: u16,
    /// Its device directory (`/local/domain/<domid>/device/<type>/<devid>`).
    pub dir: &'a str,
    nodes: &'a [(&'static str, String)],
}

impl Frontend<'_> {
    /// The text of node `key`, if the front-end published it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One kind of device's back-end: the part of a back-end that is about the
/// device. Generic over the ring page type `P`, so the same implementation
/// runs in the service domain (pages mapped by grant) and in host tests
/// (plain memory).
pub trait Backend<P: SharedPage> {
    /// What the toolstack gives one device and keeps across connections
    /// (a slice of a disk, a MAC address, a counter).
    type Device;
    /// A connected front-end: the device's ring core over its ring pages
    /// (dropping it unmaps them).
    type Conn;

    /// The xenstore device type: `device/<type>/<devid>` in the front-end's
    /// home, `backend/<type>/<frontend>/<devid>` in ours (`vbd`, `vif`).
    fn device_type(&self) -> &'static str;
    /// What log lines start with (`blkback`).
    fn log_name(&self) -> &'static str;
    /// The front-end nodes holding the grant references of the ring pages,
    /// one page each, in the order [`connect`](Self::connect) gets them.
    /// One ring by default; a network device has two (`tx-ring-ref`,
    /// `rx-ring-ref`).
    fn ring_keys(&self) -> &'static [&'static str] {
        &[KEY_RING_REF]
    }
    /// Further front-end nodes to read before connecting (`protocol`,
    /// `request-rx-copy`); they reach [`accept`](Self::accept) and
    /// [`connect`](Self::connect) through [`Frontend::get`].
    fn frontend_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Nodes the toolstack writes into the front-end's directory besides
    /// `backend`, `backend-id` and `state` (`virtual-device`, `mac`).
    fn frontend_nodes(&self, _dev: &Self::Device) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The back-end's own nodes (sizes, `feature-*`), published before
    /// `InitWait`.
    fn backend_nodes(&self, dev: &Self::Device) -> Vec<(&'static str, String)>;
    /// Checks the front-end's nodes before anything is mapped (a protocol
    /// this back-end does not speak, a feature it needs).
    ///
    /// # Errors
    /// Why the front-end cannot be served; the device closes.
    fn accept(&mut self, _dev: &Self::Device, _front: &Frontend<'_>) -> Result<(), String> {
        Ok(())
    }
    /// Builds the connection on the mapped ring pages (one per
    /// [`ring_keys`](Self::ring_keys) entry, in order).
    ///
    /// # Errors
    /// Why not; the pages are dropped (unmapped) and the device closes.
    fn connect(
        &mut self,
        dev: &mut Self::Device,
        front: &Frontend<'_>,
        rings: Vec<P>,
    ) -> Result<Self::Conn, String>;
    /// Serves the connection's rings once, a bounded amount of work, with
    /// no allocation per request.
    ///
    /// # Errors
    /// A broken ring (indices a correct front-end cannot produce), with a
    /// fixed text for the log (nothing is allocated on this path): the
    /// front-end is disconnected and never served again. Problems with a
    /// single request are answered on the ring instead.
    fn serve(
        &mut self,
        dev: &mut Self::Device,
        conn: &mut Self::Conn,
    ) -> Result<Work, &'static str>;
    /// Text added to the "connected" log line (` (16384 sectors at 0)`).
    fn connected_note(&self, _dev: &Self::Device) -> String {
        String::new()
    }
    /// The connection ended: its counters, as text for the log line
    /// (`NAME disconnected: TEXT`), empty for none. Dropping `conn` unmaps
    /// its rings.
    fn disconnected(&mut self, dev: &mut Self::Device, conn: Self::Conn) -> String;
}

/// Grant-mapping slots (pages of the service's mapping window), a bounded
/// pool shared by every device: a connection takes one per ring page and
/// gives them back when it ends. When none is left, a front-end's connect
/// fails (its device closes); nothing grows.
#[derive(Debug)]
pub struct Slots {
    free: Vec<u64>,
    first: u64,
    count: usize,
}

impl Slots {
    /// The slots `first..first + count`.
    #[must_use]
    pub fn new(first: u64, count: usize) -> Self {
        Self {
            free: (first..first + count as u64).rev().collect(),
            first,
            count,
        }
    }

    /// Takes `n` slots, or none if fewer than `n` are free.
    pub fn take(&mut self, n: usize) -> Option<Vec<u64>> {
        let at = self.free.len().checked_sub(n)?;
        Some(self.free.split_off(at))
    }

    /// Gives slots back (ones this pool did not hand out are ignored).
    pub fn give(&mut self, slots: Vec<u64>) {
        for s in slots {
            let ours = s >= self.first && s - self.first < self.count as u64;
            if ours && !self.free.contains(&s) {
                self.free.push(s);
            }
        }
    }

    /// Slots in the pool.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Slots free now.
    #[must_use]
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

/// A decimal `u32` as a front-end writes it: surrounding whitespace and a
/// trailing NUL are tolerated; signs, hex, overflow and anything else are
/// not.
#[must_use]
pub fn parse_u32(text: &str) -> Option<u32> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// What the back-end does when the front-end's `state` changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Map the rings, bind the channel, switch to `Connected` (if not yet).
    Connect,
    /// Let go of the rings and the channel, then switch to this state.
    Disconnect(XenbusState),
}

/// The back-end's reaction to the front-end entering `front` (as Linux's
/// back-ends: `Initialised` or `Connected` connects, `Closing` lets go,
/// `Closed` or a vanished node closes).
#[must_use]
pub fn on_frontend_state(front: XenbusState) -> Step {
    match front {
        XenbusState::Initialised | XenbusState::Connected => Step::Connect,
        XenbusState::Closing => Step::Disconnect(XenbusState::Closing),
        XenbusState::Closed | XenbusState::Unknown => Step::Disconnect(XenbusState::Closed),
        XenbusState::Initialising
        | XenbusState::InitWait
        | XenbusState::Reconfiguring
        | XenbusState::Reconfigured => Step::Wait,
    }
}

/// Whether a front-end in `front` starts again after a clean close (then
/// the back-end goes back to `InitWait`, as Linux's back-ends do).
#[must_use]
pub fn reopens(front: XenbusState) -> bool {
    front == XenbusState::Initialising
}

/// One connected front-end.
struct Link<C> {
    conn: C,
    port: u32,
    slots: Vec<u64>,
}

/// Where a device stands in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the front-end (`InitWait`).
    Waiting,
    /// Serving a connected front-end.
    Connected,
    /// Closed; a front-end that starts again (`Initialising`) gets a new
    /// connection.
    Closed,
    /// Finished for good: it broke its ring, could not be connected, or its
    /// domain died.
    Finished,
}

/// One device: its xenstore directories, the toolstack's data, the
/// connection if any, and where the handshake stands.
pub struct Device<D, C> {
    /// The front-end's domain.
    pub fe_dom: u16,
    /// Its name (for log lines).
    pub name: String,
    /// The device id (`devid`).
    pub devid: u32,
    /// Our directory.
    pub be_path: String,
    /// The front-end's directory.
    pub fe_path: String,
    /// What the toolstack gave it.
    pub data: D,
    link: Option<Link<C>>,
    closed: bool,
    reopenable: bool,
    failed: bool,
    announce: Option<XenbusState>,
}

impl<D, C> Device<D, C> {
    /// Where the handshake stands.
    #[must_use]
    pub fn phase(&self) -> Phase {
        match (&self.link, self.closed) {
            (Some(_), _) => Phase::Connected,
            (None, true) if self.reopenable => Phase::Closed,
            (None, true) => Phase::Finished,
            (None, false) if self.failed => Phase::Finished,
            (None, false) => Phase::Waiting,
        }
    }

    /// The connection, if one is up.
    #[must_use]
    pub fn conn(&self) -> Option<&C> {
        self.link.as_ref().map(|l| &l.conn)
    }

    /// Our event channel port, if connected.
    #[must_use]
    pub fn port(&self) -> Option<u32> {
        self.link.as_ref().map(|l| l.port)
    }
}

/// Every device of one [`Backend`] (see the crate docs).
pub struct Devices<B: Backend<P>, P: SharedPage> {
    backend: B,
    /// Our domain id (the back-end directories' home).
    own_dom: u16,
    devices: Vec<Device<B::Device, B::Conn>>,
}

fn state_path(dir: &str) -> String {
    format!("{dir}/state")
}

impl<B: Backend<P>, P: SharedPage> Devices<B, P> {
    /// No devices yet, for a back-end running in domain `own_dom`.
    pub fn new(backend: B, own_dom: u16) -> Self {
        Self {
            backend,
            own_dom,
            devices: Vec::new(),
        }
    }

    /// The back-end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The back-end, mutable (for its shared state: the real device).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The devices, in the order added.
    pub fn devices(&self) -> &[Device<B::Device, B::Conn>] {
        &self.devices
    }

    /// The toolstack's part for device `devid` of domain `fe_dom` (called
    /// `name` in logs): the front-end's `device/<type>/<devid>` directory
    /// (`backend`, `backend-id`, `state` = Initialising, the back-end's
    /// [`Backend::frontend_nodes`]) owned by the front-end and readable by
    /// us, and ours (`frontend`, `frontend-id`, [`Backend::backend_nodes`],
    /// `state` = InitWait) readable by it.
    ///
    /// # Errors
    /// A store failure; the device is not added (nodes already written
    /// stay, as a half-done toolstack's would).
    pub fn add<S: Store + ?Sized>(
        &mut self,
        store: &mut S,
        fe_dom: u16,
        name: &str,
        devid: u32,
        data: B::Device,
    ) -> Result<(), Errno> {
        let ty = self.backend.device_type();
        let me = self.own_dom;
        let be_path = format!("/local/domain/{me}/backend/{ty}/{fe_dom}/{devid}");
        let fe_path = format!("/local/domain/{fe_dom}/device/{ty}/{devid}");
        // Owner first (it may do anything), then who else may read.
        let fe_perms = format!("n{fe_dom}\0r{me}\0");
        let be_perms = format!("n{me}\0r{fe_dom}\0");
        let me_text = format!("{me}");
        let mut fe_nodes: Vec<(&str, String)> = Vec::from([
            ("backend", be_path.clone()),
            ("backend-id", me_text),
            ("state", String::from(XenbusState::Initialising.as_text())),
        ]);
        fe_nodes.extend(self.backend.frontend_nodes(&data));
        for (k, v) in &fe_nodes {
            store.write(&format!("{fe_path}/{k}"), v.as_bytes())?;
        }
        store.set_perms(&fe_path, fe_perms.as_bytes())?;
        for (k, _) in &fe_nodes {
            store.set_perms(&format!("{fe_path}/{k}"), fe_perms.as_bytes())?;
        }
        // The front-end lists its devices: it owns `device` and the type's
        // directory.
        for dir in [
            format!("/local/domain/{fe_dom}/device"),
            format!("/local/domain/{fe_dom}/device/{ty}"),
        ] {
            store.set_perms(&dir, fe_perms.as_bytes())?;
        }
        let mut be_nodes: Vec<(&str, String)> = Vec::from([
            ("frontend", fe_path.clone()),
            ("frontend-id", format!("{fe_dom}")),
        ]);
        be_nodes.extend(self.backend.backend_nodes(&data));
        for (k, v) in &be_nodes {
            store.write(&format!("{be_path}/{k}"), v.as_bytes())?;
        }
        // Last: the front-end waits for this state before it reads the rest.
        be_nodes.push(("state", String::from(XenbusState::InitWait.as_text())));
        store.write(
            &state_path(&be_path),
            XenbusState::InitWait.as_text().as_bytes(),
        )?;
        store.set_perms(&be_path, be_perms.as_bytes())?;
        for (k, _) in &be_nodes {
            store.set_perms(&format!("{be_path}/{k}"), be_perms.as_bytes())?;
        }
        self.devices.push(Device {
            fe_dom,
            name: String::from(name),
            devid,
            be_path,
            fe_path,
            data,
            link: None,
            closed: false,
            reopenable: false,
            failed: false,
            announce: None,
        });
        Ok(())
    }

    /// True when a device must publish a state without waiting for the
    /// store to change (after a broken ring, found while serving).
    pub fn wants_step(&self) -> bool {
        self.devices.iter().any(|d| d.announce.is_some())
    }

    /// Follows every device's front-end one step (see the crate docs).
    /// Returns whether anything changed.
    pub fn step<S: Store + ?Sized, Pl: Platform<Page = P>>(
        &mut self,
        store: &mut S,
        platform: &mut Pl,
        slots: &mut Slots,
    ) -> bool {
        let mut changed = false;
        for i in 0..self.devices.len() {
            changed |= self.step_one(i, store, platform, slots);
        }
        changed
    }

    fn set_state<S: Store + ?Sized>(store: &mut S, dir: &str, s: XenbusState) {
        // Best effort: a store that refuses our own node leaves the
        // front-end waiting, which only that front-end notices.
        let _ = store.write(&state_path(dir), s.as_text().as_bytes());
    }

    fn step_one<S: Store + ?Sized, Pl: Platform<Page = P>>(
        &mut self,
        i: usize,
        store: &mut S,
        platform: &mut Pl,
        slots: &mut Slots,
    ) -> bool {
        let log = self.backend.log_name();
        let mut changed = false;
        let d = &mut self.devices[i];
        if let Some(s) = d.announce.take() {
            Self::set_state(store, &d.be_path, s);
            changed = true;
        }
        if d.closed && !d.reopenable {
            return changed;
        }
        let front = store
            .read(&state_path(&d.fe_path))
            .ok()
            .and_then(|t| XenbusState::parse(&t))
            .unwrap_or(XenbusState::Unknown);
        if d.closed {
            if reopens(front) {
                d.closed = false;
                d.reopenable = false;
                Self::set_state(store, &d.be_path, XenbusState::InitWait);
                platform.log(format_args!(
                    "{log}: {}: front-end starts again; back-end in InitWait",
                    d.name
                ));
                return true;
            }
            return changed;
        }
        match on_frontend_state(front) {
            Step::Connect if d.link.is_none() && !d.failed => {
                match self.connect(i, store, platform, slots) {
                    Ok(()) => {
                        let d = &self.devices[i];
                        Self::set_state(store, &d.be_path, XenbusState::Connected);
                        let note = self.backend.connected_note(&d.data);
                        platform.log(format_args!("{log}: {} connected{note}", d.name));
                    }
                    Err(why) => {
                        let d = &mut self.devices[i];
                        platform.log(format_args!("{log}: {}: cannot connect: {why}", d.name));
                        Self::set_state(store, &d.be_path, XenbusState::Closed);
                        d.closed = true;
                        d.failed = true;
                    }
                }
                true
            }
            Step::Disconnect(s) if d.link.is_some() || s == XenbusState::Closed => {
                self.disconnect(i, platform, slots);
                let d = &mut self.devices[i];
                Self::set_state(store, &d.be_path, s);
                if s == XenbusState::Closed {
                    d.closed = true;
                    d.reopenable = !d.failed;
                }
                true
            }
            _ => changed,
        }
    }

    /// Reads and checks the front-end's nodes, takes slots, maps the rings,
    /// binds the channel and builds the connection; on failure nothing
    /// stays mapped, bound or taken.
    fn connect<S: Store + ?Sized, Pl: Platform<Page = P>>(
        &mut self,
        i: usize,
        store: &mut S,
        platform: &mut Pl,
        slots: &mut Slots,
    ) -> Result<(), String> {
        let ring_keys = self.backend.ring_keys();
        let d = &mut self.devices[i];
        let mut nodes: Vec<(&'static str, String)> = Vec::new();
        for &k in ring_keys
            .iter()
            .chain(&[KEY_EVENT_CHANNEL])
            .chain(self.backend.frontend_keys())
        {
            if let Ok(v) = store.read(&format!("{}/{k}", d.fe_path)) {
                nodes.push((k, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        let front = Frontend {
            domid: d.fe_dom,
            dir: &d.fe_path,
            nodes: &nodes,
        };
        let number = |key: &'static str| -> Result<u32, String> {
            let text = front
                .get(key)
                .ok_or_else(|| format!("front-end node `{key}` is missing"))?;
            parse_u32(text).ok_or_else(|| format!("front-end node `{key}` has an invalid value"))
        };
        let mut refs = Vec::with_capacity(ring_keys.len());
        for &k in ring_keys {
            refs.push(number(k)?);
        }
        let remote_port = number(KEY_EVENT_CHANNEL)?;
        // Port 0 is reserved and never allocated.
        if remote_port == 0 {
            return Err(format!(
                "front-end node `{KEY_EVENT_CHANNEL}` has an invalid value"
            ));
        }
        self.backend.accept(&d.data, &front)?;
        let taken = slots.take(refs.len()).ok_or_else(|| {
            format!(
                "no grant-mapping slot free for {} ring page(s) ({} free)",
                refs.len(),
                slots.available()
            )
        })?;
        let mut pages = Vec::with_capacity(refs.len());
        for (&gref, &slot) in refs.iter().zip(&taken) {
            match platform.map_ring(d.fe_dom, gref, slot) {
                Ok(p) => pages.push(p),
                Err(why) => {
                    drop(pages);
                    slots.give(taken);
                    return Err(format!("ring grant {gref}: {why}"));
                }
            }
        }
        let port = match platform.bind(d.fe_dom, remote_port) {
            Ok(p) => p,
            Err(why) => {
                drop(pages);
                slots.give(taken);
                return Err(format!("event channel {remote_port}: {why}"));
            }
        };
        match self.backend.connect(&mut d.data, &front, pages) {
            Ok(conn) => {
                d.link = Some(Link {
                    conn,
                    port,
                    slots: taken,
                });
                Ok(())
            }
            Err(why) => {
                platform.unbind(port);
                slots.give(taken);
                Err(why)
            }
        }
    }

    /// Drops device `i`'s connection: closes the port, unmaps the rings
    /// (the connection is dropped), gives the slots back, logs its counters.
    fn disconnect<Pl: Platform<Page = P>>(
        &mut self,
        i: usize,
        platform: &mut Pl,
        slots: &mut Slots,
    ) {
        let log = self.backend.log_name();
        let d = &mut self.devices[i];
        if let Some(link) = d.link.take() {
            platform.unbind(link.port);
            let stats = self.backend.disconnected(&mut d.data, link.conn);
            slots.give(link.slots);
            if stats.is_empty() {
                platform.log(format_args!("{log}: {} disconnected", d.name));
            } else {
                platform.log(format_args!("{log}: {} disconnected: {stats}", d.name));
            }
        }
    }

    /// Serves every connected device once (a bounded amount each, so a
    /// front-end that refills its ring as fast as it is drained leaves the
    /// others their turn). Returns whether any wants serving again soon. A
    /// device whose ring broke is disconnected and announces `Closing` at
    /// its next step.
    pub fn serve<Pl: Platform<Page = P>>(&mut self, platform: &mut Pl, slots: &mut Slots) -> bool {
        let mut more = false;
        for i in 0..self.devices.len() {
            let d = &mut self.devices[i];
            let Some(link) = d.link.as_mut() else {
                continue;
            };
            match self.backend.serve(&mut d.data, &mut link.conn) {
                Ok(w) => {
                    if w.notify {
                        platform.notify(link.port);
                    }
                    more |= w.more;
                }
                Err(fatal) => {
                    let log = self.backend.log_name();
                    platform.log(format_args!(
                        "{log}: {}: {fatal}; disconnecting this front-end",
                        d.name
                    ));
                    self.disconnect(i, platform, slots);
                    // Tell it (Closing), follow it to Closed, never serve it
                    // again.
                    let d = &mut self.devices[i];
                    d.failed = true;
                    d.announce = Some(XenbusState::Closing);
                }
            }
        }
        more
    }

    /// Domain `dom` has ended: drop its devices' connections and never step
    /// them again (its store nodes may still read Connected, and a
    /// reconnection would map a grant of a domain that no longer exists).
    pub fn domain_died<Pl: Platform<Page = P>>(
        &mut self,
        dom: u16,
        platform: &mut Pl,
        slots: &mut Slots,
    ) {
        for i in 0..self.devices.len() {
            if self.devices[i].fe_dom != dom {
                continue;
            }
            self.disconnect(i, platform, slots);
            let d = &mut self.devices[i];
            d.closed = true;
            d.reopenable = false;
            d.failed = true;
            d.announce = None;
        }
    }
}
