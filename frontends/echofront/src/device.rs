//! The echo front-end in a running guest: the xenbus handshake over
//! pv-guest-kernel's xenstore client, the ring page granted to the back-end,
//! the event channel, and blocking calls built on [`EchoFront`].
//!
//! ```ignore
//! let mut xs = pv_guest_kernel::xenstore::connect()?;
//! pv_guest_kernel::gnttab::init(1)?;
//! let mut echo = echofront::device::EchoDevice::connect(&mut xs)?;
//! let reply = echo.call(ECHO_OP_UPPERCASE, b"hello")?;   // b"HELLO"
//! echo.close(&mut xs)?;
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_abi::errno::Errno;
use guest_abi::io::echo::EchoRequest;
use guest_abi::io::ring::FrontRing;
use guest_abi::io::xenbus::XenbusState;
use pv_guest_kernel::page::MappedPage;
use pv_guest_kernel::xenbus::{self as xb, Store};
use pv_guest_kernel::xenstore::NO_TX;
use pv_guest_kernel::{events, gnttab};

use crate::{EchoFront, Error, Features, Reply};

/// Set by the event channel's handler (in the upcall); the waiting loop
/// clears it.
static EVENT: AtomicBool = AtomicBool::new(false);

fn on_event(_port: u32) {
    EVENT.store(true, Ordering::SeqCst);
}

/// An error of the device layer.
#[derive(Debug)]
pub enum DeviceError {
    /// A xenstore or hypercall failure (`ENODEV`: no echo device).
    Errno(Errno),
    /// The front-end core refused, or the ring broke.
    Front(Error),
    /// The back-end's nodes were unusable.
    Negotiation(String),
}

impl From<Errno> for DeviceError {
    fn from(e: Errno) -> Self {
        Self::Errno(e)
    }
}

impl From<Error> for DeviceError {
    fn from(e: Error) -> Self {
        Self::Front(e)
    }
}

/// A connected echo device.
pub struct EchoDevice {
    front: EchoFront<MappedPage>,
    /// Our end of the event channel.
    port: u32,
    /// The grant of the ring page.
    ring_ref: u32,
    /// The device's front-end directory (`device/echo/<id>`).
    pub dir: String,
    /// The back-end's directory (absolute).
    pub backend_dir: String,
    /// The back-end's domain.
    pub backend: u16,
    /// Replies collected while waiting for others.
    done: Vec<Reply>,
    next_tag: u64,
}

impl EchoDevice {
    /// Finds the first `echo` device in our xenstore home and connects to
    /// its back-end:
    ///
    /// 1. waits for the back-end to publish its features and reach
    ///    `InitWait`, and reads them;
    /// 2. allocates a ring page, initialises the ring header in it and
    ///    grants the page to the back-end's domain;
    /// 3. allocates an unbound event channel port for the back-end;
    /// 4. publishes `ring-ref` and `event-channel` and switches to
    ///    `Initialised`;
    /// 5. waits for the back-end to reach `Connected` (it mapped the ring and
    ///    bound the port) and switches to `Connected`.
    ///
    /// # Errors
    /// `ENODEV` if there is no echo device; a store or hypercall failure
    /// (`ENOTCONN` if the back-end closes instead); unusable back-end nodes.
    /// The grant and port are released again on failure.
    pub fn connect<S: Store + ?Sized>(xs: &mut S) -> Result<Self, DeviceError> {
        let dev = xb::frontend_devices(xs, "echo")?
            .into_iter()
            .next()
            .ok_or(DeviceError::Errno(Errno::ENODEV))?;
        let peer = xb::read_backend(xs, &dev.dir)?;
        xb::wait_for_state(xs, &peer.path, XenbusState::InitWait)?;
        // The back-end published its features before InitWait. (A node
        // that cannot be read counts as absent: feature not offered.)
        let features: Features = crate::xenbus::parse_backend(|key| {
            let v = xs.read(NO_TX, &xb::join(&peer.path, key)).ok()?;
            Some(String::from_utf8_lossy(&v).into_owned())
        })
        .map_err(|e| DeviceError::Negotiation(format!("{e:?}")))?;

        // The ring: a fresh page of ours, header initialised before the
        // back-end can see it, granted writable (the back-end writes
        // responses into it).
        let (page, ring_mfn) = pv_guest_kernel::page::alloc_shared()?;
        let ring = FrontRing::init(page);
        let ring_ref = gnttab::grant_access(peer.domid, ring_mfn, false)?;
        let port = match events::alloc_unbound(peer.domid, on_event) {
            Ok(p) => p,
            Err(e) => {
                let _ = gnttab::end_access(ring_ref);
                return Err(e.into());
            }
        };
        let handshake = |xs: &mut S| -> Result<(), Errno> {
            let entries = crate::xenbus::frontend_entries(ring_ref, port);
            let nodes: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
            xb::write_nodes(xs, &dev.dir, &nodes)?;
            xb::switch_state(xs, &dev.dir, XenbusState::Initialised)?;
            xb::wait_for_state(xs, &peer.path, XenbusState::Connected)?;
            xb::switch_state(xs, &dev.dir, XenbusState::Connected)
        };
        if let Err(e) = handshake(xs) {
            let _ = events::close(port);
            // Fails (EBUSY) if the back-end mapped the page meanwhile; the
            // grant then stays, as the page does.
            let _ = gnttab::end_access(ring_ref);
            return Err(e.into());
        }
        Ok(Self {
            front: EchoFront::new(ring, features),
            port,
            ring_ref,
            dir: dev.dir,
            backend_dir: peer.path,
            backend: peer.domid,
            done: Vec::new(),
            next_tag: 0,
        })
    }

    /// What the back-end offers.
    #[must_use]
    pub fn features(&self) -> &Features {
        self.front.features()
    }

    /// The front-end core (protocol errors, ring state).
    #[must_use]
    pub fn front(&self) -> &EchoFront<MappedPage> {
        &self.front
    }

    /// The front-end core, mutable (to take its protocol errors).
    pub fn front_mut(&mut self) -> &mut EchoFront<MappedPage> {
        &mut self.front
    }

    /// Our end of the event channel.
    #[must_use]
    pub fn port(&self) -> u32 {
        self.port
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Sends an event if the core says the back-end asked for one.
    fn kick(&self, notify: bool) {
        if notify {
            let _ = events::send(self.port);
        }
    }

    /// Queues a request without waiting for its answer; returns its tag for
    /// [`wait`](Self::wait).
    ///
    /// # Errors
    /// What [`EchoFront::submit`] refuses (including a full ring).
    pub fn submit(&mut self, operation: u8, payload: &[u8]) -> Result<u64, DeviceError> {
        let tag = self.tag();
        let notify = self.front.submit(operation, payload, tag)?;
        self.kick(notify);
        Ok(tag)
    }

    /// Queues `req` unchecked (for tests of a hostile front-end); returns
    /// its tag.
    ///
    /// # Errors
    /// A full or broken ring.
    pub fn submit_raw(&mut self, req: EchoRequest) -> Result<u64, DeviceError> {
        let tag = self.tag();
        let notify = self.front.submit_raw(req, tag)?;
        self.kick(notify);
        Ok(tag)
    }

    /// Blocks until every request in `tags` is answered; returns their
    /// replies in the order given. Replies to other requests that arrive
    /// meanwhile are kept for their own `wait`.
    ///
    /// # Errors
    /// [`Error::Ring`] if the back-end broke the ring.
    pub fn wait(&mut self, tags: &[u64]) -> Result<Vec<Reply>, DeviceError> {
        loop {
            if tags.iter().all(|t| self.done.iter().any(|r| r.tag == *t)) {
                let mut out = Vec::with_capacity(tags.len());
                for t in tags {
                    if let Some(i) = self.done.iter().position(|r| r.tag == *t) {
                        out.push(self.done.swap_remove(i));
                    }
                }
                return Ok(out);
            }
            let replies = self.front.poll()?;
            if !replies.is_empty() {
                self.done.extend(replies);
                continue;
            }
            // Nothing yet: sleep until the back-end's event. `poll` re-armed
            // rsp_event; with delivery disabled, look at the flag and the
            // ring once more, so an event that came in between is not lost.
            events::disable();
            if !EVENT.swap(false, Ordering::SeqCst)
                && !self.front.ring().final_check_for_responses()
            {
                // Re-enables delivery atomically: no event is lost.
                let _ = guest_abi::hypercall::sched_block();
            } else {
                events::enable();
            }
        }
    }

    /// Sends one request and waits for its reply.
    ///
    /// # Errors
    /// As [`submit`](Self::submit) and [`wait`](Self::wait).
    pub fn call(&mut self, operation: u8, payload: &[u8]) -> Result<Reply, DeviceError> {
        let tag = self.submit(operation, payload)?;
        let mut r = self.wait(&[tag])?;
        r.pop().ok_or(DeviceError::Errno(Errno::EIO))
    }

    /// Disconnects: switches to `Closing`, waits for the back-end to let go
    /// of the ring (it unmaps the page and closes its end of the channel,
    /// then reaches `Closing` or `Closed`), ends the ring's grant, closes our
    /// port and switches to `Closed`. The ring page itself is not freed
    /// (pages from `alloc_shared` never are).
    ///
    /// # Errors
    /// A store failure, or `EBUSY` if the back-end still maps the ring.
    pub fn close<S: Store + ?Sized>(self, xs: &mut S) -> Result<(), DeviceError> {
        xb::switch_state(xs, &self.dir, XenbusState::Closing)?;
        xb::wait_for_state(xs, &self.backend_dir, XenbusState::Closing)?;
        // The grant table refuses this while the back-end maps the page.
        gnttab::end_access(self.ring_ref)?;
        let _ = events::close(self.port);
        xb::switch_state(xs, &self.dir, XenbusState::Closed)?;
        Ok(())
    }
}
