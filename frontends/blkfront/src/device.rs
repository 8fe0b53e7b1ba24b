//! The block front-end in a running guest: the xenbus handshake over
//! pv-guest-kernel's xenstore client, the ring page and data pages granted
//! to the back-end with pv-guest-kernel's grant table, the event channel,
//! and blocking `read`/`write`/`flush` built on [`BlkFront`].
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

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_abi::errno::Errno;
use guest_abi::io::ring::FrontRing;
use guest_abi::io::xenbus::XenbusState;
use pv_guest_kernel::page::MappedPage;
use pv_guest_kernel::xenbus::{self as xb, Store};
use pv_guest_kernel::xenstore::NO_TX;
use pv_guest_kernel::{events, gnttab};

use crate::{BlkFront, Completion, DeviceInfo, Error, GrantError, Grants, Segment, plan_io};

/// Set by the event channel's handler.
static EVENT: AtomicBool = AtomicBool::new(false);

fn on_event(_port: u32) {
    EVENT.store(true, Ordering::SeqCst);
}

/// Grants through pv-guest-kernel's grant table, to one back-end domain.
pub struct KernelGrants {
    backend: u16,
}

impl Grants for KernelGrants {
    fn grant(&mut self, gfn: u64, readonly: bool) -> Result<u32, GrantError> {
        gnttab::grant_access(self.backend, gfn, readonly).map_err(|_| GrantError::Exhausted)
    }
    fn end(&mut self, gref: u32) -> Result<(), GrantError> {
        match gnttab::end_access(gref) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => Err(GrantError::InUse),
            Err(_) => Err(GrantError::BadRef),
        }
    }
}

/// Page-aligned memory whose frames the back-end is granted.
pub use pv_guest_kernel::page::PageBuffer as Buffer;

/// A connected virtual disk.
pub struct BlkDevice {
    front: BlkFront<MappedPage, KernelGrants>,
    port: u32,
    /// The device's front-end directory (`device/vbd/<id>`).
    pub dir: String,
    /// The back-end's domain.
    pub backend: u16,
    next_tag: u64,
    /// Completions received while waiting for other requests, by tag.
    finished: Vec<(u64, i16)>,
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(&v)).into_owned()
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

impl BlkDevice {
    /// Finds the first `vbd` device in our xenstore home and connects to
    /// its back-end: waits for it to publish its nodes (InitWait), grants
    /// it a fresh ring page, offers it an event channel, publishes
    /// `ring-ref`, `event-channel` and `protocol`, switches to Initialised,
    /// waits for Connected and reads the disk's size and features.
    pub fn connect<S: Store + ?Sized>(xs: &mut S) -> Result<Self, DeviceError> {
        let dev = xb::frontend_devices(xs, "vbd")?
            .into_iter()
            .next()
            .ok_or(DeviceError::Errno(Errno::ENODEV))?;
        let peer = xb::read_backend(xs, &dev.dir)?;
        xb::wait_for_state(xs, &peer.path, XenbusState::InitWait)?;
        let (page, ring_mfn) = pv_guest_kernel::page::alloc_shared()?;
        let ring = FrontRing::init(page);
        let ring_ref = gnttab::grant_access(peer.domid, ring_mfn, false)?;
        let port = events::alloc_unbound(peer.domid, on_event)?;
        let entries = crate::xenbus::frontend_entries(ring_ref, port);
        let nodes: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xb::write_nodes(xs, &dev.dir, &nodes)?;
        xb::switch_state(xs, &dev.dir, XenbusState::Initialised)?;
        xb::wait_for_state(xs, &peer.path, XenbusState::Connected)?;
        let mut values: Vec<(String, String)> = Vec::new();
        for k in [
            crate::xenbus::KEY_SECTORS,
            crate::xenbus::KEY_INFO,
            crate::xenbus::KEY_SECTOR_SIZE,
            crate::xenbus::KEY_FEATURE_FLUSH_CACHE,
            crate::xenbus::KEY_FEATURE_BARRIER,
        ] {
            if let Ok(v) = xs.read(NO_TX, &xb::join(&peer.path, k)) {
                values.push((String::from(k), text(v)));
            }
        }
        let info: DeviceInfo = crate::xenbus::parse_backend(|k| {
            values.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .map_err(|e| DeviceError::Negotiation(format!("{e:?}")))?;
        xb::switch_state(xs, &dev.dir, XenbusState::Connected)?;
        let handle = dev.devid.parse::<u32>().unwrap_or(0) as u16;
        let front = BlkFront::new(
            ring,
            KernelGrants {
                backend: peer.domid,
            },
            info,
            handle,
        );
        Ok(Self {
            front,
            port,
            dir: dev.dir,
            backend: peer.domid,
            next_tag: 1,
            finished: Vec::new(),
        })
    }

    /// The disk's size and features.
    pub fn info(&self) -> &DeviceInfo {
        self.front.info()
    }

    /// The front-end core (statistics, protocol errors).
    pub fn front(&self) -> &BlkFront<MappedPage, KernelGrants> {
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
                events::disable();
                if !EVENT.swap(false, Ordering::SeqCst)
                    && !self.front.ring().final_check_for_responses()
                {
                    // Re-enables delivery atomically: no event is lost.
                    let _ = guest_abi::hypercall::sched_block();
                } else {
                    events::enable();
                }
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
                        if notify {
                            let _ = events::send(self.port);
                        }
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
        if self.front.submit_flush(tag)? {
            let _ = events::send(self.port);
        }
        self.wait_for(Vec::from([tag]))
    }

    /// Submits a raw request with `segments` (for tests of a hostile
    /// front-end), waiting for its answer; returns the back-end's status.
    pub fn raw_read(&mut self, sector: u64, segments: &[Segment]) -> Result<i16, DeviceError> {
        let tag = self.tag();
        if self.front.submit_read(sector, segments, tag)? {
            let _ = events::send(self.port);
        }
        match self.wait_for(Vec::from([tag])) {
            Ok(()) => Ok(0),
            Err(DeviceError::Status(s)) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// The event channel to the back-end.
    pub fn port(&self) -> u32 {
        self.port
    }
}
