//! The block front-end in a running guest: [`BlkFront`] connected through
//! the split-driver framework (`splitfront`: the xenbus handshake, the
//! granted ring page, the event channel, a bounded budget of data-page
//! grants, waiting and close), plus blocking `read`/`write`/`flush`.
//!
//! ```ignore
//! let mut xs = pv_guest_kernel::xenstore::connect()?;
//! pv_guest_kernel::gnttab::init(1)?;
//! let mut disk = blkfront::device::BlkDevice::connect(&mut xs)?;
//! let mut buf = blkfront::device::Buffer::new(8)?;      // 8 pages, page-aligned
//! buf.bytes_mut()[..5].copy_from_slice(b"hello");
//! disk.write(0, &buf, 4096)?;
//! disk.flush()?;
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::errno::Errno;
use pv_guest_kernel::xenbus::Store;
use splitfront::kernel::Guest;
use splitfront::{Connected, DataGrants, Kernel, Link, Nodes, Which};

use crate::{
    BlkFront, BlkFrontRing, Completion, DeviceInfo, Error, GrantError, Grants, MAX_SEGMENTS,
    Segment, plan_io,
};

/// Data pages are granted through the framework's bounded budget.
impl<K: Kernel> Grants for DataGrants<K> {
    fn grant(&mut self, gfn: u64, readonly: bool) -> Result<u32, GrantError> {
        DataGrants::grant(self, gfn, readonly).map_err(|_| GrantError::Exhausted)
    }
    fn end(&mut self, gref: u32) -> Result<(), GrantError> {
        match DataGrants::end(self, gref) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => Err(GrantError::InUse),
            Err(_) => Err(GrantError::BadRef),
        }
    }
}

/// What the handshake yields for a virtual disk: the ring, the disk's
/// parameters and the device handle. The block device's
/// [`splitfront::Frontend`]: publishes `protocol`, reads the disk's size
/// and features once the back-end is `Connected`; data pages are granted
/// per request from a budget of a full ring's worth of segments.
pub struct Negotiated<P> {
    /// The ring (header initialised by the framework).
    pub ring: BlkFrontRing<P>,
    /// The disk.
    pub info: DeviceInfo,
    /// The device handle (the device id).
    pub handle: u16,
}

impl<P: SharedPage> splitfront::Frontend<P> for Negotiated<P> {
    const TYPE: &'static str = "vbd";
    const CONNECTED_KEYS: &'static [&'static str] = &[
        crate::xenbus::KEY_SECTORS,
        crate::xenbus::KEY_INFO,
        crate::xenbus::KEY_SECTOR_SIZE,
        crate::xenbus::KEY_FEATURE_FLUSH_CACHE,
        crate::xenbus::KEY_FEATURE_BARRIER,
    ];
    const DATA_GRANTS: usize = BlkFrontRing::<P>::SIZE as usize * MAX_SEGMENTS;
    type Offer = ();

    fn negotiate(_features: &Nodes) -> Result<(), String> {
        Ok(())
    }

    fn frontend_nodes(_offer: &()) -> Vec<(&'static str, String)> {
        Vec::from([(
            crate::xenbus::KEY_PROTOCOL,
            String::from(crate::xenbus::PROTOCOL_X86_64),
        )])
    }

    fn connected(_offer: (), at: &Connected<'_>, rings: Vec<P>) -> Result<Self, String> {
        let info = crate::xenbus::parse_backend(|k| at.nodes.get(k))
            .map_err(|e| alloc::format!("{e:?}"))?;
        let page = rings.into_iter().next().ok_or("no ring")?;
        Ok(Self {
            ring: BlkFrontRing::attach(page, 0),
            info,
            handle: at.devid.parse::<u32>().unwrap_or(0) as u16,
        })
    }
}

use crate::SharedPage;

/// Page-aligned memory whose frames the back-end is granted.
pub use pv_guest_kernel::page::PageBuffer as Buffer;

/// A connected virtual disk.
pub struct BlkDevice<K: Kernel + Clone = Guest> {
    front: BlkFront<K::Page, DataGrants<K>>,
    link: Link<K>,
    next_tag: u64,
    /// Completions received while waiting for other requests, by tag.
    finished: Vec<(u64, i16)>,
}

/// An error of the device layer: a xenstore/hypercall errno, or the
/// front-end's own.
#[derive(Debug)]
pub enum DeviceError {
    /// A xenstore or hypercall failure.
    Errno(Errno),
    /// The front-end refused or the back-end answered badly.
    Front(Error),
    /// The back-end's nodes were unusable.
    Negotiation(String),
    /// The back-end completed a request with this `BLKIF_RSP_*` status.
    Status(i16),
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

impl BlkDevice<Guest> {
    /// Connects to the first `vbd` device in our xenstore home (the
    /// framework's handshake, see `splitfront::connect`): the back-end's
    /// `InitWait`, a granted ring page, an event channel, `ring-ref`,
    /// `event-channel` and `protocol`, `Initialised`, then its `Connected`
    /// and the disk's size and features.
    ///
    /// # Errors
    /// `ENODEV` without a virtual disk; a store or hypercall failure;
    /// unusable back-end nodes.
    pub fn connect<S: Store + ?Sized>(xs: &mut S) -> Result<Self, DeviceError> {
        Self::connect_with(xs, Guest)
    }
}

impl<K: Kernel + Clone> BlkDevice<K> {
    /// [`BlkDevice::connect`] on another kernel.
    ///
    /// # Errors
    /// As [`BlkDevice::connect`].
    pub fn connect_with<S: Store + ?Sized>(xs: &mut S, kernel: K) -> Result<Self, DeviceError> {
        let (n, link): (Negotiated<K::Page>, _) = splitfront::connect(xs, kernel, Which::First)?;
        let front = BlkFront::new(n.ring, link.data_grants(), n.info, n.handle);
        Ok(Self {
            front,
            link,
            next_tag: 1,
            finished: Vec::new(),
        })
    }

    /// The connection: our directory, the back-end's, its domain, our port.
    pub fn link(&self) -> &Link<K> {
        &self.link
    }

    /// The disk's size and features.
    pub fn info(&self) -> &DeviceInfo {
        self.front.info()
    }

    /// The front-end core (statistics, protocol errors).
    pub fn front(&self) -> &BlkFront<K::Page, DataGrants<K>> {
        &self.front
    }

    /// Waits until the back-end answers `tags` (each once); returns the
    /// first failing status, if any.
    fn wait_for(&mut self, mut tags: Vec<u64>) -> Result<(), DeviceError> {
        let mut status = Ok(());
        loop {
            // Answers that came in while waiting for others count too.
            let finished = &mut self.finished;
            tags.retain(|&t| match finished.iter().position(|&(f, _)| f == t) {
                Some(i) => {
                    let (_, st) = finished.swap_remove(i);
                    if st != guest_abi::io::blkif::BLKIF_RSP_OKAY && status.is_ok() {
                        status = Err(DeviceError::Status(st));
                    }
                    false
                }
                None => true,
            });
            if tags.is_empty() {
                return status;
            }
            let done: Vec<Completion> = self.front.poll()?;
            if done.is_empty() {
                let front = &self.front;
                self.link
                    .wait_until(|| front.ring().final_check_for_responses());
                continue;
            }
            self.finished.extend(done.iter().map(|c| (c.tag, c.status)));
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn transfer(
        &mut self,
        write: bool,
        sector: u64,
        buf: &Buffer,
        len: usize,
    ) -> Result<(), DeviceError> {
        let frames = buf.frames()?;
        let plan = plan_io(sector, len as u64, &frames)?;
        self.run_plan(write, plan)
    }

    /// Submits every chunk, keeping as many in flight as the ring holds
    /// (waiting for the oldest when it is full), then waits for the rest.
    fn run_plan(&mut self, write: bool, plan: Vec<crate::IoChunk>) -> Result<(), DeviceError> {
        let mut pending: Vec<u64> = Vec::new();
        for chunk in plan {
            let tag = self.tag();
            loop {
                let r = if write {
                    self.front.submit_write(chunk.sector, &chunk.segments, tag)
                } else {
                    self.front.submit_read(chunk.sector, &chunk.segments, tag)
                };
                match r {
                    Ok(notify) => {
                        self.link.notify_if(notify);
                        pending.push(tag);
                        break;
                    }
                    Err(Error::RingFull) if !pending.is_empty() => {
                        let first = pending.remove(0);
                        self.wait_for(Vec::from([first]))?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.wait_for(pending)
    }

    /// A sequential stream of `count` requests of `req_bytes` each (a
    /// multiple of 512, at most 11 pages) from `sector`, all using the first
    /// pages of `buf` as their data (so for reads its contents are
    /// whichever request finished last): keeps the ring full, as a
    /// streaming reader or writer would. For benchmarks.
    pub fn stream(
        &mut self,
        write: bool,
        sector: u64,
        count: u64,
        req_bytes: usize,
        buf: &Buffer,
    ) -> Result<(), DeviceError> {
        let frames = buf.frames()?;
        let one = plan_io(0, req_bytes as u64, &frames)?;
        let [first] = one.as_slice() else {
            return Err(DeviceError::Front(Error::BadLength));
        };
        let per = (req_bytes / 512) as u64;
        let plan = (0..count)
            .map(|i| crate::IoChunk {
                sector: sector + i * per,
                segments: first.segments.clone(),
            })
            .collect();
        self.run_plan(write, plan)
    }

    /// Reads `len` bytes (a multiple of 512) from `sector` into `buf`, with
    /// as many requests in flight as the ring holds.
    pub fn read(&mut self, sector: u64, buf: &mut Buffer, len: usize) -> Result<(), DeviceError> {
        self.transfer(false, sector, buf, len)
    }

    /// Writes `len` bytes from `buf` at `sector`; done when the back-end
    /// acknowledged every request (data on its disk, not necessarily
    /// flushed).
    pub fn write(&mut self, sector: u64, buf: &Buffer, len: usize) -> Result<(), DeviceError> {
        self.transfer(true, sector, buf, len)
    }

    /// Makes every acknowledged write durable (flush or barrier).
    pub fn flush(&mut self) -> Result<(), DeviceError> {
        let tag = self.tag();
        let notify = self.front.submit_flush(tag)?;
        self.link.notify_if(notify);
        self.wait_for(Vec::from([tag]))
    }

    /// Submits a raw request with `segments` (for tests of a hostile
    /// front-end), waiting for its answer; returns the back-end's status.
    pub fn raw_read(&mut self, sector: u64, segments: &[Segment]) -> Result<i16, DeviceError> {
        let tag = self.tag();
        let notify = self.front.submit_read(sector, segments, tag)?;
        self.link.notify_if(notify);
        match self.wait_for(Vec::from([tag])) {
            Ok(()) => Ok(0),
            Err(DeviceError::Status(s)) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// The event channel to the back-end.
    pub fn port(&self) -> u32 {
        self.link.port()
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
