//! The front-end half of the split-driver framework: everything a
//! front-end in a guest does that is not about its device.
//!
//! A device's front-end core implements [`Frontend`]: which back-end nodes
//! it reads, what it publishes, how it builds itself on its ring pages.
//! [`connect`] does the rest, as Xen's xenbus front-end code does:
//!
//! 1. finds the device (`device/<type>/<devid>` in our home) and its
//!    back-end (`backend`, `backend-id`), and waits for the back-end to
//!    reach `InitWait`;
//! 2. reads the back-end's features ([`Frontend::FEATURE_KEYS`]) and lets
//!    the core decide ([`Frontend::negotiate`]);
//! 3. for each ring ([`Frontend::RINGS`]): a fresh page, its ring header
//!    initialised *before* it is granted (writable) to the back-end's
//!    domain only;
//! 4. an event channel allocated unbound for the back-end's domain;
//! 5. publishes the ring references, `event-channel` and the core's own
//!    nodes in one transaction, switches to `Initialised`, waits for the
//!    back-end's `Connected`, reads [`Frontend::CONNECTED_KEYS`], builds
//!    the core ([`Frontend::connected`]) and switches to `Connected`.
//!
//! On any failure every grant and port taken is released again (a grant the
//! back-end already maps stays, as it must) and, once published, the state
//! goes to `Closed` so the back-end lets go. The [`Link`] returned with the
//! core carries what the connection needs afterwards: events both ways
//! ([`Link::notify`], [`Link::wait_until`], which cannot lose a wake-up),
//! a bounded budget of data-page grants ([`Link::data_grants`]) and the
//! close ([`Link::close`]: `Closing`, the back-end lets go, grants ended,
//! port closed, `Closed`).
//!
//! The kernel services are reached through [`Kernel`]; [`kernel::Guest`]
//! is pv-guest-kernel's, and with feature `testing` the `testing` module
//! runs a front-end against a real `splitback` back-end on the host.
//! Everything the back-end writes is untrusted: node values reach the core
//! as text for it to check.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod kernel;
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
use guest_abi::io::ring::init_shared_ring;
pub use guest_abi::io::xenbus::XenbusState;
use pv_guest_kernel::xenbus::{self as xb, Store};
use pv_guest_kernel::xenstore::NO_TX;

/// Front-end node: grant reference of a one-page ring (the usual name).
pub const KEY_RING_REF: &str = "ring-ref";
/// Front-end node: our event channel port for the back-end.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";

/// The kernel services a front-end needs.
pub trait Kernel {
    /// A page of ours shared with the back-end.
    type Page: SharedPage;
    /// A fresh zeroed page to share, and the frame number to grant.
    ///
    /// # Errors
    /// No memory.
    fn alloc_page(&mut self) -> Result<(Self::Page, u64), Errno>;
    /// Grants domain `dom` access to our frame `frame`; the reference.
    ///
    /// # Errors
    /// No free reference (`ENOSPC`).
    fn grant(&mut self, dom: u16, frame: u64, readonly: bool) -> Result<u32, Errno>;
    /// Ends grant `gref`.
    ///
    /// # Errors
    /// `EBUSY` while the peer still maps it.
    fn end_grant(&mut self, gref: u32) -> Result<(), Errno>;
    /// Allocates a port domain `dom` may bind; its events wake
    /// [`wait`](Self::wait) on it.
    ///
    /// # Errors
    /// The hypervisor's refusal.
    fn alloc_port(&mut self, dom: u16) -> Result<u32, Errno>;
    /// Closes our port.
    fn close_port(&mut self, port: u32);
    /// Sends an event on our port.
    fn notify(&mut self, port: u32);
    /// Blocks until an event arrives on `port`, unless one arrived since
    /// the last wait or `ready()` is true when asked with delivery off (so
    /// a wake-up between the caller's check and the block is never lost).
    fn wait(&mut self, port: u32, ready: &mut dyn FnMut() -> bool);
}

/// Node values read from the peer's directory (those present), as text.
#[derive(Clone, Debug, Default)]
pub struct Nodes(Vec<(&'static str, String)>);

impl Nodes {
    /// The text of `key`, without a trailing NUL, if present.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Reads `keys` under `dir` (absent ones are left out; other store
    /// errors are returned).
    ///
    /// # Errors
    /// A store failure other than `ENOENT`.
    pub fn read<S: Store + ?Sized>(
        xs: &mut S,
        dir: &str,
        keys: &[&'static str],
    ) -> Result<Self, Errno> {
        let mut out = Vec::new();
        for &k in keys {
            match xs.read(NO_TX, &xb::join(dir, k)) {
                Ok(v) => {
                    let v = v.strip_suffix(&[0]).unwrap_or(&v);
                    out.push((k, String::from_utf8_lossy(v).into_owned()));
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self(out))
    }

    /// Nodes from pairs (for tests).
    #[must_use]
    pub fn from_pairs(pairs: &[(&'static str, &str)]) -> Self {
        Self(pairs.iter().map(|(k, v)| (*k, String::from(*v))).collect())
    }
}

/// What a core learns when the back-end has connected.
#[derive(Debug)]
pub struct Connected<'a> {
    /// The back-end's domain.
    pub backend: u16,
    /// Our device id (the directory's name).
    pub devid: &'a str,
    /// The back-end's [`Frontend::CONNECTED_KEYS`] nodes.
    pub nodes: &'a Nodes,
}

/// One kind of device's front-end core: the part of a front-end that is
/// about the device. Generic over the ring page type `P` (pages of the
/// guest, or plain memory in host tests).
pub trait Frontend<P: SharedPage>: Sized {
    /// The xenstore device type (`vbd`, `vif`, `echo`).
    const TYPE: &'static str;
    /// Our nodes holding the rings' grant references, one page each, in the
    /// order [`connected`](Self::connected) gets them.
    const RINGS: &'static [&'static str] = &[KEY_RING_REF];
    /// Back-end nodes read at `InitWait` for [`negotiate`](Self::negotiate).
    const FEATURE_KEYS: &'static [&'static str] = &[];
    /// Back-end nodes read at `Connected` for [`connected`](Self::connected).
    const CONNECTED_KEYS: &'static [&'static str] = &[];
    /// Data-page grants the core may hold at once ([`Link::data_grants`]).
    const DATA_GRANTS: usize = 0;
    /// What negotiation decided (the back-end's features).
    type Offer;
    /// Checks the back-end's features and decides what to use.
    ///
    /// # Errors
    /// Unusable nodes: the connection is not made.
    fn negotiate(features: &Nodes) -> Result<Self::Offer, String>;
    /// Nodes to publish besides the ring references and `event-channel`
    /// (`protocol`, `request-rx-copy`).
    fn frontend_nodes(_offer: &Self::Offer) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Builds the core on its rings (headers already initialised) once the
    /// back-end is `Connected`.
    ///
    /// # Errors
    /// Unusable nodes: the connection is closed again.
    fn connected(offer: Self::Offer, at: &Connected<'_>, rings: Vec<P>) -> Result<Self, String>;
}

/// Why [`connect`] failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A xenstore or hypercall failure (`ENODEV`: no such device;
    /// `ENOTCONN`: the back-end closed instead).
    Errno(Errno),
    /// The back-end's nodes were unusable.
    Negotiation(String),
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Self::Errno(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Errno(e) => write!(f, "{e:?}"),
            Self::Negotiation(why) => write!(f, "back-end's nodes: {why}"),
        }
    }
}

/// A connection's plumbing, owned beside the core (see the crate docs).
pub struct Link<K: Kernel> {
    kernel: K,
    /// Our device directory (`device/<type>/<devid>`, relative to our home).
    pub dir: String,
    /// Our device id.
    pub devid: String,
    /// The back-end's directory (absolute).
    pub backend_dir: String,
    /// The back-end's domain.
    pub backend: u16,
    port: u32,
    ring_refs: Vec<u32>,
    data_limit: usize,
}

/// Chooses which device [`connect`] takes.
#[derive(Clone, Copy, Debug)]
pub enum Which<'a> {
    /// The first of its type, in the store's order.
    First,
    /// The one with this device id.
    Id(&'a str),
}

/// Connects to a device of type `F::TYPE` (see the crate docs for the
/// steps); returns the core and its [`Link`].
///
/// # Errors
/// `ENODEV` if there is no such device; a store or hypercall failure
/// (`ENOTCONN` if the back-end closes instead); unusable back-end nodes.
pub fn connect<F, S, K>(xs: &mut S, kernel: K, which: Which<'_>) -> Result<(F, Link<K>), Error>
where
    F: Frontend<K::Page>,
    S: Store + ?Sized,
    K: Kernel,
{
    let dev = xb::frontend_devices(xs, F::TYPE)?
        .into_iter()
        .find(|d| match which {
            Which::First => true,
            Which::Id(id) => d.devid == id,
        })
        .ok_or(Error::Errno(Errno::ENODEV))?;
    let peer = xb::read_backend(xs, &dev.dir)?;
    xb::wait_for_state(xs, &peer.path, XenbusState::InitWait)?;
    let features = Nodes::read(xs, &peer.path, F::FEATURE_KEYS)?;
    let offer = F::negotiate(&features).map_err(Error::Negotiation)?;

    let mut link = Link {
        kernel,
        dir: dev.dir,
        devid: dev.devid,
        backend_dir: peer.path,
        backend: peer.domid.0,
        port: 0,
        ring_refs: Vec::new(),
        data_limit: F::DATA_GRANTS,
    };
    let mut pages = Vec::with_capacity(F::RINGS.len());
    let shared = (|| -> Result<(), Errno> {
        for _ in F::RINGS {
            let (page, frame) = link.kernel.alloc_page()?;
            // The back-end may map the page as soon as it learns the
            // reference: the header is written first.
            init_shared_ring(&page, 0);
            let gref = link.kernel.grant(link.backend, frame, false)?;
            link.ring_refs.push(gref);
            pages.push(page);
        }
        link.port = link.kernel.alloc_port(link.backend)?;
        Ok(())
    })();
    if let Err(e) = shared {
        link.release();
        return Err(e.into());
    }
    let mut nodes: Vec<(&str, String)> = F::RINGS
        .iter()
        .zip(&link.ring_refs)
        .map(|(k, r)| (*k, format!("{r}")))
        .collect();
    nodes.push((KEY_EVENT_CHANNEL, format!("{}", link.port)));
    nodes.extend(F::frontend_nodes(&offer));
    let handshake = |xs: &mut S, link: &Link<K>| -> Result<F, Error> {
        let pairs: Vec<(&str, &str)> = nodes.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xb::write_nodes(xs, &link.dir, &pairs)?;
        xb::switch_state(xs, &link.dir, XenbusState::Initialised)?;
        xb::wait_for_state(xs, &link.backend_dir, XenbusState::Connected)?;
        let at = Nodes::read(xs, &link.backend_dir, F::CONNECTED_KEYS)?;
        let core = F::connected(
            offer,
            &Connected {
                backend: link.backend,
                devid: &link.devid,
                nodes: &at,
            },
            pages,
        )
        .map_err(Error::Negotiation)?;
        xb::switch_state(xs, &link.dir, XenbusState::Connected)?;
        Ok(core)
    };
    match handshake(xs, &link) {
        Ok(core) => Ok((core, link)),
        Err(e) => {
            // Tell the back-end to let go; what it still maps stays granted.
            let _ = xb::switch_state(xs, &link.dir, XenbusState::Closed);
            link.release();
            Err(e)
        }
    }
}

impl<K: Kernel> Link<K> {
    /// Our end of the event channel.
    #[must_use]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The rings' grant references, in [`Frontend::RINGS`] order.
    #[must_use]
    pub fn ring_refs(&self) -> &[u32] {
        &self.ring_refs
    }

    /// Sends the back-end an event.
    pub fn notify(&mut self) {
        self.kernel.notify(self.port);
    }

    /// Sends the back-end an event if `needed` (what a ring's
    /// `push_requests_and_check_notify` returned).
    pub fn notify_if(&mut self, needed: bool) {
        if needed {
            self.notify();
        }
    }

    /// Blocks until the back-end's next event, unless one came since the
    /// last wait or `ready()` holds (asked with delivery off: pass the
    /// ring's `final_check_for_responses`). Loop around it: it may return
    /// without new responses.
    pub fn wait_until(&mut self, mut ready: impl FnMut() -> bool) {
        self.kernel.wait(self.port, &mut ready);
    }

    /// The budget of data-page grants to the back-end
    /// ([`Frontend::DATA_GRANTS`] at most at once). Take it once, for the
    /// core that grants data pages.
    #[must_use]
    pub fn data_grants(&self) -> DataGrants<K>
    where
        K: Clone,
    {
        DataGrants {
            kernel: self.kernel.clone(),
            backend: self.backend,
            limit: self.data_limit,
            in_use: 0,
        }
    }

    /// Ends the ring grants and closes the port (best effort).
    fn release(&mut self) {
        if self.port != 0 {
            self.kernel.close_port(self.port);
            self.port = 0;
        }
        for gref in core::mem::take(&mut self.ring_refs) {
            // EBUSY: the back-end maps it; the grant stays, as the page.
            let _ = self.kernel.end_grant(gref);
        }
    }

    /// Disconnects: switches to `Closing`, waits for the back-end to let
    /// go (it unmaps the rings and closes its port, then reaches `Closing`
    /// or `Closed`), ends the ring grants, closes our port and switches to
    /// `Closed`. The ring pages are not freed (the core owned them; shared
    /// pages are kept for the domain's life).
    ///
    /// # Errors
    /// A store failure, or `EBUSY` if the back-end still maps a ring (the
    /// grant cannot end: a back-end that broke the protocol).
    pub fn close<S: Store + ?Sized>(mut self, xs: &mut S) -> Result<(), Errno> {
        xb::switch_state(xs, &self.dir, XenbusState::Closing)?;
        xb::wait_for_state(xs, &self.backend_dir, XenbusState::Closing)?;
        let mut result = Ok(());
        for gref in core::mem::take(&mut self.ring_refs) {
            if let Err(e) = self.kernel.end_grant(gref) {
                result = Err(e);
            }
        }
        result?;
        self.kernel.close_port(self.port);
        self.port = 0;
        xb::switch_state(xs, &self.dir, XenbusState::Closed)
    }
}

/// A bounded budget of grants of data pages to one back-end: a core asks
/// here for each page a request names, and gives the grant back when the
/// request completes, so no front-end holds more than its
/// [`Frontend::DATA_GRANTS`] at once.
#[derive(Debug)]
pub struct DataGrants<K: Kernel> {
    kernel: K,
    backend: u16,
    limit: usize,
    in_use: usize,
}

impl<K: Kernel> DataGrants<K> {
    /// Grants `frame` to the back-end (read-only if `readonly`).
    ///
    /// # Errors
    /// `ENOSPC` when the budget is spent (or the table full).
    pub fn grant(&mut self, frame: u64, readonly: bool) -> Result<u32, Errno> {
        if self.in_use >= self.limit {
            return Err(Errno::ENOSPC);
        }
        let gref = self.kernel.grant(self.backend, frame, readonly)?;
        self.in_use += 1;
        Ok(gref)
    }

    /// Ends grant `gref`, returning it to the budget.
    ///
    /// # Errors
    /// `EBUSY` while the back-end still maps it (then it stays counted).
    pub fn end(&mut self, gref: u32) -> Result<(), Errno> {
        self.kernel.end_grant(gref)?;
        self.in_use = self.in_use.saturating_sub(1);
        Ok(())
    }

    /// Grants held now.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// The most it may hold.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }
}
