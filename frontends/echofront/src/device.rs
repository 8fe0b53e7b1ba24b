//! The echo front-end in a running guest: [`EchoFront`] connected through
//! the split-driver framework (`splitfront`: the xenbus handshake, the
//! granted ring page, the event channel, waiting and close), plus blocking
//! calls.
//!
//! ```ignore
//! let mut xs = pv_guest_kernel::xenstore::connect()?;
//! pv_guest_kernel::gnttab::init(1)?;
//! let mut echo = echofront::device::EchoDevice::connect(&mut xs)?;
//! let reply = echo.call(ECHO_OP_UPPERCASE, b"hello")?;   // b"HELLO"
//! echo.close(&mut xs)?;
//! ```
//!
//! Generic over the kernel ([`splitfront::Kernel`]): a guest uses
//! [`splitfront::kernel::Guest`] (the default), host tests the framework's
//! loopback against the real back-end.

use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::errno::Errno;
use guest_abi::io::echo::EchoRequest;
use pv_guest_kernel::xenbus::Store;
use splitfront::kernel::Guest;
use splitfront::{Kernel, Link, Which};

use crate::{EchoFront, Error, Features, Reply};

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

impl From<splitfront::Error> for DeviceError {
    fn from(e: splitfront::Error) -> Self {
        match e {
            splitfront::Error::Errno(e) => Self::Errno(e),
            splitfront::Error::Negotiation(why) => Self::Negotiation(why),
        }
    }
}

/// A connected echo device.
pub struct EchoDevice<K: Kernel = Guest> {
    front: EchoFront<K::Page>,
    link: Link<K>,
    /// Replies collected while waiting for others.
    done: Vec<Reply>,
    next_tag: u64,
}

impl EchoDevice<Guest> {
    /// Connects to the first `echo` device in our xenstore home (the
    /// framework's handshake, see `splitfront::connect`).
    ///
    /// # Errors
    /// `ENODEV` if there is no echo device; a store or hypercall failure
    /// (`ENOTCONN` if the back-end closes instead); unusable back-end nodes.
    pub fn connect<S: Store + ?Sized>(xs: &mut S) -> Result<Self, DeviceError> {
        Self::connect_with(xs, Guest)
    }
}

impl<K: Kernel> EchoDevice<K> {
    /// [`EchoDevice::connect`] on another kernel.
    ///
    /// # Errors
    /// As [`EchoDevice::connect`].
    pub fn connect_with<S: Store + ?Sized>(xs: &mut S, kernel: K) -> Result<Self, DeviceError> {
        let (front, link) = splitfront::connect(xs, kernel, Which::First)?;
        Ok(Self {
            front,
            link,
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
    pub fn front(&self) -> &EchoFront<K::Page> {
        &self.front
    }

    /// The front-end core, mutable (to take its protocol errors).
    pub fn front_mut(&mut self) -> &mut EchoFront<K::Page> {
        &mut self.front
    }

    /// The connection: our directory, the back-end's, its domain, our port.
    #[must_use]
    pub fn link(&self) -> &Link<K> {
        &self.link
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Queues a request without waiting for its answer; returns its tag for
    /// [`wait`](Self::wait).
    ///
    /// # Errors
    /// What [`EchoFront::submit`] refuses (including a full ring).
    pub fn submit(&mut self, operation: u8, payload: &[u8]) -> Result<u64, DeviceError> {
        let tag = self.tag();
        let notify = self.front.submit(operation, payload, tag)?;
        self.link.notify_if(notify);
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
        self.link.notify_if(notify);
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
            if replies.is_empty() {
                let front = &self.front;
                self.link
                    .wait_until(|| front.ring().final_check_for_responses());
            } else {
                self.done.extend(replies);
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

    /// Disconnects (the framework's close: `Closing`, the back-end lets go
    /// of the ring, the grant ends, the port closes, `Closed`).
    ///
    /// # Errors
    /// A store failure, or `EBUSY` if the back-end still maps the ring.
    pub fn close<S: Store + ?Sized>(self, xs: &mut S) -> Result<(), DeviceError> {
        Ok(self.link.close(xs)?)
    }
}
