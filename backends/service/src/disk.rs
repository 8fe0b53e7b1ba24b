//! The service domain's real disk: QEMU's virtio-blk, reached over one of
//! microvm's virtio-mmio transports and driven with the `virtio-drivers`
//! crate, behind [`blkback::Disk`].
//!
//! ```ignore
//! let mut disk = disk::probe()?;          // finds and initialises virtio-blk
//! let mut sector0 = [0u8; 512];
//! disk.read(0, &mut sector0)?;            // blocking, polled
//! ```
//!
//! Two things differ from the bare-metal setting `virtio-drivers` expects:
//!
//! - **Addresses.** A PV guest sees pseudo-physical frames; the device (QEMU)
//!   reads and writes *machine* addresses, and consecutive guest pages are in
//!   general not consecutive machine frames. [`PvHal`] therefore hands the
//!   driver machine addresses: queues live in machine-contiguous DMA memory,
//!   and a buffer the driver passes to the device is either given directly
//!   (when its pages happen to be machine-contiguous, e.g. any buffer within
//!   one page) or copied through a bounce buffer.
//! - **Discovery.** microvm has no PCI and we read no ACPI: the transports sit
//!   at fixed addresses ([`VIRTIO_MMIO_BASE`], [`VIRTIO_MMIO_STRIDE`] apart,
//!   [`VIRTIO_MMIO_SLOTS`] of them) and [`probe`] simply walks them.
//!
//! Requests are synchronous: each one is queued, the device notified, and the
//! used ring polled until the device answers. The device still raises its
//! interrupt line on completion; [`VirtioDisk::ack_interrupt`] clears it.
//!
//! # microvm's virtio-mmio layout (QEMU 7.2 and 10.0, the defaults xtask uses)
//!
//! With ACPI enabled (microvm's default) QEMU adds a second IO-APIC (at
//! 0xfec10000, GSIs 24..=47) and creates 24 virtio-mmio transports, slot `i`
//! at `0xfeb00000 + i * 0x200` wired to GSI `24 + i` (pin `i` of the second
//! IO-APIC), level-triggered, active-high. Devices given with `-device
//! virtio-*-device` fill the slots from the top: the first one on the command
//! line gets slot 23 (0xfeb02e00, GSI 47), the next slot 22, and so on. (With
//! `-M microvm,acpi=off` there would be only 8 slots, on GSIs 5..=12; with
//! `ioapic2=off`, 8 slots on GSIs 16..=23.) The transports are legacy
//! (virtio-mmio version 1, QEMU's `force-legacy=true` default), which
//! `virtio-drivers` handles: the whole virtqueue then sits in one
//! machine-contiguous allocation whose frame number the device takes as 32
//! bits.

use core::fmt;
use core::ptr::{self, NonNull};

use blkback::{Disk, DiskError, SECTOR_SIZE};
use guest_abi::errno::Errno;
use spin::Mutex;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

pub use virtio_drivers::transport::InterruptStatus;

use pv_guest_kernel::mm;

/// Machine address of microvm's first virtio-mmio transport.
pub const VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// Bytes between consecutive transports (each one's register window).
pub const VIRTIO_MMIO_STRIDE: usize = 0x200;
/// Transports QEMU creates on microvm with ACPI and the second IO-APIC (the
/// default); see the module documentation.
pub const VIRTIO_MMIO_SLOTS: usize = 24;
/// GSI of transport slot 0; slot `i` interrupts on `VIRTIO_MMIO_GSI_BASE + i`.
pub const VIRTIO_MMIO_GSI_BASE: u32 = 24;

/// Largest transfer handed to the device in one virtio-blk request; longer
/// reads and writes are split. Also bounds how much one request can need
/// from the bounce pool.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// VIRTIO_BLK_F_FLUSH: the device has a volatile write cache and accepts
/// VIRTIO_BLK_T_FLUSH.
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const PAGE: u64 = PAGE_SIZE as u64;

/// Pages covering all transports, mapped once by [`probe`].
const MMIO_WINDOW_PAGES: usize = (VIRTIO_MMIO_SLOTS * VIRTIO_MMIO_STRIDE).div_ceil(PAGE_SIZE);

/// Why [`probe`] found no usable disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The virtio-mmio window could not be mapped.
    MapIo(Errno),
    /// The bounce-buffer pool could not be allocated.
    Dma(Errno),
    /// No transport carries a block device.
    NotFound,
    /// A block device was found but could not be initialised.
    Init(virtio_drivers::Error),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MapIo(e) => write!(f, "cannot map the virtio-mmio window: {e}"),
            Self::Dma(e) => write!(f, "cannot allocate DMA bounce buffers: {e}"),
            Self::NotFound => f.write_str("no virtio-blk device on any virtio-mmio transport"),
            Self::Init(e) => write!(f, "virtio-blk initialisation failed: {e}"),
        }
    }
}

/// Finds the first virtio-blk device (in QEMU command-line order, i.e. from
/// the highest slot down) among microvm's virtio-mmio transports, and
/// initialises it.
///
/// Call it once: a second call would find and reset the same device. The
/// transport window stays mapped for the life of the domain. Transports
/// carrying other device types are left untouched.
///
/// # Errors
/// [`ProbeError`] if the window cannot be mapped, no block device exists, or
/// the device (or the DMA memory it needs) cannot be set up.
pub fn probe() -> Result<VirtioDisk, ProbeError> {
    let window = mm::map_io(VIRTIO_MMIO_BASE, MMIO_WINDOW_PAGES).map_err(ProbeError::MapIo)?;
    for slot in (0..VIRTIO_MMIO_SLOTS).rev() {
        let va = window + (slot * VIRTIO_MMIO_STRIDE) as u64;
        let Some(header) = NonNull::new(ptr::with_exposed_provenance_mut::<VirtIOHeader>(
            va as usize,
        )) else {
            continue;
        };
        // SAFETY: `header` is the start of this slot's 0x200-byte register
        // window (header and config space), mapped uncached by `map_io`, and
        // never unmapped, so valid for 'static. Each slot is wrapped at most
        // once per probe, so nothing else accesses it through another
        // transport.
        let transport = match unsafe { MmioTransport::new(header, VIRTIO_MMIO_STRIDE) } {
            Ok(t) => t,
            // An empty slot (device ID 0) or something that is not virtio.
            Err(_) => continue,
        };
        if transport.device_type() != DeviceType::Block {
            // Dropping a transport resets its device; leave others alone.
            core::mem::forget(transport);
            continue;
        }
        return VirtioDisk::new(transport, slot);
    }
    Err(ProbeError::NotFound)
}

/// A virtio-blk device driven synchronously, serving as a [`blkback::Disk`].
pub struct VirtioDisk {
    blk: VirtIOBlk<PvHal, MmioTransport<'static>>,
    slot: usize,
    flush: bool,
}

impl VirtioDisk {
    fn new(mut transport: MmioTransport<'static>, slot: usize) -> Result<Self, ProbeError> {
        // `VirtIOBlk` negotiates VIRTIO_BLK_F_FLUSH whenever the device offers
        // it but does not say whether it did: read the offer ourselves, after
        // a reset and ACKNOWLEDGE|DRIVER as the spec orders (VirtIOBlk::new
        // starts over with its own reset).
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let flush = transport.read_device_features() & VIRTIO_BLK_F_FLUSH != 0;
        // Take the bounce pool's memory now, so that running out shows here
        // rather than as a panic in the middle of a request.
        PvHal::reserve_bounce().map_err(ProbeError::Dma)?;
        let blk = VirtIOBlk::<PvHal, _>::new(transport).map_err(ProbeError::Init)?;
        Ok(Self { blk, slot, flush })
    }

    /// The transport slot the device sits in (0..[`VIRTIO_MMIO_SLOTS`]).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Machine address of the device's register window.
    pub fn mmio_base(&self) -> u64 {
        VIRTIO_MMIO_BASE + (self.slot * VIRTIO_MMIO_STRIDE) as u64
    }

    /// The GSI the device interrupts on (level-triggered, active-high, on
    /// the second IO-APIC).
    pub fn gsi(&self) -> u32 {
        VIRTIO_MMIO_GSI_BASE + self.slot as u32
    }

    /// Whether the device offered (and so negotiated) VIRTIO_BLK_F_FLUSH,
    /// making [`Disk::flush`] send VIRTIO_BLK_T_FLUSH. Without it virtio has
    /// no flush command: a completed write is taken as durable and flush does
    /// nothing. (QEMU offers it by default, and a legacy QEMU device keeps its
    /// write-back cache on exactly when it is negotiated.)
    pub fn has_flush(&self) -> bool {
        self.flush
    }

    /// Acknowledges the device's pending interrupt causes (reads
    /// InterruptStatus and writes it back to InterruptACK), which lowers its
    /// level-triggered line. Returns what was pending (empty if nothing).
    ///
    /// Requests here are polled, so this is only needed once the GSI is
    /// routed; the device raises the line after every completion either way.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.blk.ack_interrupt()
    }

    /// Checks that `len` bytes from `sector` are whole sectors within the
    /// device; returns the sector count.
    fn check(&self, sector: u64, len: usize) -> Result<u64, DiskError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            // The Disk contract rules this out; refuse rather than round.
            return Err(DiskError::Io);
        }
        let count = (len / SECTOR_SIZE) as u64;
        match sector.checked_add(count) {
            Some(end) if end <= self.blk.capacity() => Ok(count),
            _ => Err(DiskError::OutOfRange),
        }
    }
}

/// Every driver error is an I/O error to the back-end: range and read-only
/// checks happen before a request reaches the device.
fn io_error(_: virtio_drivers::Error) -> DiskError {
    DiskError::Io
}

impl Disk for VirtioDisk {
    fn sectors(&self) -> u64 {
        self.blk.capacity()
    }

    fn read_only(&self) -> bool {
        self.blk.readonly()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(sector, buf.len())?;
        let mut at = sector;
        for chunk in buf.chunks_mut(MAX_REQUEST_BYTES) {
            self.blk.read_blocks(at as usize, chunk).map_err(io_error)?;
            at += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        if self.read_only() {
            return Err(DiskError::ReadOnly);
        }
        self.check(sector, data.len())?;
        let mut at = sector;
        for chunk in data.chunks(MAX_REQUEST_BYTES) {
            self.blk
                .write_blocks(at as usize, chunk)
                .map_err(io_error)?;
            at += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        // A read-only device holds no unwritten data: nothing to flush (and
        // blkback passes front-end flushes through even for read-only disks).
        if self.read_only() {
            return Ok(());
        }
        // Sends VIRTIO_BLK_T_FLUSH when VIRTIO_BLK_F_FLUSH was negotiated, and
        // does nothing otherwise (see `has_flush`).
        self.blk.flush().map_err(io_error)
    }
}

/// `virtio_drivers::Hal` for a PV guest: device addresses are machine
/// addresses.
///
/// - `dma_alloc` takes machine-contiguous, zeroed, writable pages from
///   `mm::alloc_dma`; `dma_dealloc` leaks them (there is no `free_dma`; the
///   only DMA allocations are a disk's virtqueue, which lives as long as the
///   domain).
/// - `share` returns the buffer's own machine address when its pages are
///   machine-contiguous (always true within one page): no copy, one
///   `virt_to_machine` per page touched. Otherwise it copies the buffer into
///   a bounce buffer (below) and returns that: one extra copy of the buffer
///   in `share` and, for device-writable buffers, one back in `unshare`.
///   The copy-in is done for device-writable buffers too, so that bytes the
///   device leaves unwritten come back unchanged instead of as stale pool
///   contents.
/// - `mmio_phys_to_virt` (used only by the PCI transport) maps with
///   `mm::map_io`.
///
/// Bounce buffers come from a pool of machine-contiguous regions
/// ([`BOUNCE_REGION_PAGES`] pages each, allocated with `alloc_dma` and never
/// freed), handed out a whole number of pages at a time. A blocking
/// virtio-blk request needs at most 17 pages at once (16 for a 64 KiB data
/// buffer, one for a request header that crosses a page), so the first
/// region, reserved by [`probe`], serves every request; the pool grows (up
/// to 8 regions) only if more is shared at once, and `share` panics if it
/// cannot grow (the trait gives it no way to fail).
pub struct PvHal;

/// Pages in each bounce region (128 KiB).
pub const BOUNCE_REGION_PAGES: usize = 32;

/// One machine-contiguous bounce region and which of its pages are lent out
/// (bit `i` = page `i`; hence at most 64 pages).
struct BounceRegion {
    va: u64,
    ma: u64,
    pages: usize,
    used: u64,
}

const MAX_REGION_PAGES: usize = u64::BITS as usize;

impl BounceRegion {
    /// Lends `n` consecutive free pages; returns the first one's index.
    fn take(&mut self, n: usize) -> Option<usize> {
        let run = if n >= MAX_REGION_PAGES {
            u64::MAX
        } else {
            (1u64 << n) - 1
        };
        let last = self.pages.checked_sub(n)?;
        let first = (0..=last).find(|&i| self.used & (run << i) == 0)?;
        self.used |= run << first;
        Some(first)
    }

    /// Returns `n` pages from index `first`.
    fn give_back(&mut self, first: usize, n: usize) {
        let run = if n >= MAX_REGION_PAGES {
            u64::MAX
        } else {
            (1u64 << n) - 1
        };
        self.used &= !(run << first);
    }

    fn holds(&self, ma: u64) -> bool {
        ma >= self.ma && ma - self.ma < self.pages as u64 * PAGE
    }
}

/// Most bounce regions the pool grows to.
const MAX_BOUNCE_REGIONS: usize = 8;

/// The bounce regions allocated so far (a fixed table: this module needs no
/// heap).
struct Pool {
    regions: [BounceRegion; MAX_BOUNCE_REGIONS],
    count: usize,
}

impl Pool {
    fn regions(&mut self) -> &mut [BounceRegion] {
        &mut self.regions[..self.count]
    }

    fn push(&mut self, r: BounceRegion) -> &mut BounceRegion {
        assert!(
            self.count < MAX_BOUNCE_REGIONS,
            "virtio bounce pool: all {MAX_BOUNCE_REGIONS} regions in use"
        );
        self.regions[self.count] = r;
        self.count += 1;
        &mut self.regions[self.count - 1]
    }
}

const NO_REGION: BounceRegion = BounceRegion {
    va: 0,
    ma: 0,
    pages: 0,
    used: 0,
};

/// The bounce pool. Only task code touches it (never an event handler), and
/// pv-guest-kernel threads are cooperative, so the lock is never contended.
static BOUNCE: Mutex<Pool> = Mutex::new(Pool {
    regions: [NO_REGION; MAX_BOUNCE_REGIONS],
    count: 0,
});

fn new_region(pages: usize) -> Result<BounceRegion, Errno> {
    let (va, ma) = mm::alloc_dma(pages)?;
    Ok(BounceRegion {
        va,
        ma,
        pages,
        used: 0,
    })
}

impl PvHal {
    /// Makes sure the bounce pool has its first region.
    ///
    /// # Errors
    /// The `alloc_dma` error if it cannot be allocated.
    pub fn reserve_bounce() -> Result<(), Errno> {
        let mut pool = BOUNCE.lock();
        if pool.count == 0 {
            pool.push(new_region(BOUNCE_REGION_PAGES)?);
        }
        Ok(())
    }

    /// Lends `pages` machine-contiguous pages; returns (va, machine address).
    fn bounce_take(pages: usize) -> (u64, u64) {
        assert!(
            pages <= MAX_REGION_PAGES,
            "virtio buffer of {pages} pages is too large to bounce"
        );
        let mut pool = BOUNCE.lock();
        for r in pool.regions() {
            if let Some(i) = r.take(pages) {
                return (r.va + i as u64 * PAGE, r.ma + i as u64 * PAGE);
            }
        }
        let fresh = new_region(pages.max(BOUNCE_REGION_PAGES))
            .unwrap_or_else(|e| panic!("virtio bounce pool: cannot grow by {pages} pages: {e}"));
        let r = pool.push(fresh);
        let i = r.take(pages).expect("a fresh region has room");
        (r.va + i as u64 * PAGE, r.ma + i as u64 * PAGE)
    }

    /// Machine address of `len` (> 0) bytes at `va` if all the pages they
    /// touch are machine-contiguous.
    fn direct(va: u64, len: usize) -> Option<u64> {
        let first = Self::machine(va);
        let end = va + len as u64;
        let mut page = (va & !(PAGE - 1)) + PAGE;
        while page < end {
            if Self::machine(page) != first + (page - va) {
                return None;
            }
            page += PAGE;
        }
        Some(first)
    }

    fn machine(va: u64) -> u64 {
        mm::virt_to_machine(va).unwrap_or_else(|| panic!("virtio buffer at {va:#x} is not mapped"))
    }
}

fn va_ptr(va: u64) -> *mut u8 {
    ptr::with_exposed_provenance_mut(va as usize)
}

// SAFETY: dma_alloc returns alloc_dma's pages: zeroed, page-aligned, mapped,
// handed out once and never freed, so they alias nothing; the device gets
// their machine address. share/unshare give the device machine addresses of
// memory that stays valid until unshare: either the caller's own frames
// (which the caller keeps alive and does not touch meanwhile) or bounce
// pages lent to exactly one buffer until its unshare. mmio_phys_to_virt
// returns a fresh uncached mapping of the requested range.
unsafe impl Hal for PvHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match mm::alloc_dma(pages) {
            // Machine frame 0 is never a guest's; `Dma::new` reads a 0
            // address as failure anyway.
            Ok((va, ma)) => match NonNull::new(va_ptr(va)) {
                Some(p) => (ma, p),
                None => (0, NonNull::dangling()),
            },
            Err(_) => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Leaked: see the type's documentation. 0 = success (anything else
        // makes virtio-drivers panic).
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let offset = paddr % PAGE;
        let pages = (offset as usize + size.max(1)).div_ceil(PAGE_SIZE);
        let va = mm::map_io(paddr - offset, pages)
            .unwrap_or_else(|e| panic!("cannot map device MMIO at {paddr:#x}: {e}"));
        NonNull::new(va_ptr(va + offset)).expect("map_io returned a null address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let src = buffer.cast::<u8>().as_ptr();
        let len = buffer.len();
        if let Some(ma) = Self::direct(src.addr() as u64, len) {
            return ma;
        }
        let (bva, bma) = Self::bounce_take(len.div_ceil(PAGE_SIZE));
        // Copied whatever the direction: see the type's documentation.
        // SAFETY: the caller guarantees `buffer` is valid for `len` bytes and
        // not accessed by anyone else during this call; the bounce pages are
        // ours alone, mapped writable, at least `len` bytes long, and cannot
        // overlap the caller's buffer.
        unsafe { ptr::copy_nonoverlapping(src, va_ptr(bva), len) };
        bma
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        let mut pool = BOUNCE.lock();
        let Some(r) = pool.regions().iter_mut().find(|r| r.holds(paddr)) else {
            // Shared directly: nothing to copy or return.
            return;
        };
        let first = ((paddr - r.ma) / PAGE) as usize;
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `paddr` was returned by `share` for this `buffer`, so
            // the `len` bytes from the same offset of the region are its
            // bounce copy, which the device has finished with; the caller
            // guarantees `buffer` is valid and not otherwise accessed.
            unsafe {
                ptr::copy_nonoverlapping(
                    va_ptr(r.va + (paddr - r.ma)),
                    buffer.cast::<u8>().as_ptr(),
                    len,
                )
            };
        }
        r.give_back(first, len.div_ceil(PAGE_SIZE));
    }
}
