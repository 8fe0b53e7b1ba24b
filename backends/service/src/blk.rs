//! The block back-end in the service domain (the role of Xen's blkback
//! driver plus the toolstack's disk setup): [`Blk`] is the block device's
//! [`splitback::Backend`] (its nodes, the protocol check, `blkback` over a
//! slice of the real disk, data moved with `GNTTABOP_copy` so the back-end
//! never maps guest data pages); [`Disks`] is its [`Driver`]: probes the
//! virtio disk, routes its interrupt, carves the slices `vbd=` names.
//! The handshake, ring mapping and teardown are the framework's.
//!
//! Everything the front-end writes (xenstore nodes, ring, grants) is
//! hostile: a malformed handshake closes only that device; a broken ring
//! (producer index past the ring) disconnects only that device.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use blkback::{BadGrant, BlkBack, DeviceInfo, Disk, DiskError, GrantIo};
use guest_abi::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_OKAY, GnttabCopy, GnttabCopyPtr,
};
use guest_abi::types::{DomId, GrantRef};
use pv_guest_kernel::gnttab::GrantedPage;
use pv_guest_kernel::{events, gnttab, mm, println};
use splitback::{Backend, Frontend, Work};

use crate::disk::VirtioDisk;
use crate::driver::{CmdlineDevices, Driver, Env, Io};

/// The virtual disk name a `vbd=` entry gets when it names none.
pub const DEFAULT_VDEV: &str = "xvda";
const PAGE: usize = 4096;

/// A slice of the real disk: sectors `start..start + sectors`.
pub struct Slice<'a, D: Disk + ?Sized> {
    pub disk: &'a mut D,
    pub start: u64,
    pub sectors: u64,
}

impl<D: Disk + ?Sized> Slice<'_, D> {
    /// The real disk's sector for `len` bytes from slice sector `sector`,
    /// if they lie inside the slice.
    fn place(&self, sector: u64, len: usize) -> Result<u64, DiskError> {
        let n = (len / 512) as u64;
        if sector.checked_add(n).is_none_or(|end| end > self.sectors) {
            return Err(DiskError::OutOfRange);
        }
        Ok(self.start + sector)
    }
}

impl<D: Disk + ?Sized> Disk for Slice<'_, D> {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let at = self.place(sector, buf.len())?;
        self.disk.read(at, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        let at = self.place(sector, data.len())?;
        self.disk.write(at, data)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.disk.flush()
    }
}

/// Data movement with the front-end `dom` by grant copy.
pub struct CopyGrants {
    pub dom: u16,
    pub copies: u64,
}

impl CopyGrants {
    /// All of a request's spans in one `GNTTABOP_copy`, each split where
    /// our buffer crosses a page.
    fn batch(
        &mut self,
        spans: &[blkback::GrantSpan],
        local: *const u8,
        len: usize,
        to_guest: bool,
    ) -> Result<(), BadGrant> {
        // At most 11 spans, each split at most once where our buffer crosses
        // a page: a fixed array, no allocation on the request path.
        let mut ops: heapless::Vec<GnttabCopy, 24> = heapless::Vec::new();
        let mut at = 0usize;
        for s in spans {
            if s.offset + s.len > PAGE || at + s.len > len {
                return Err(BadGrant);
            }
            let mut done = 0;
            while done < s.len {
                let va = local as u64 + (at + done) as u64;
                let n = (PAGE - (va as usize % PAGE)).min(s.len - done);
                let ma = mm::virt_to_machine(va).ok_or(BadGrant)?;
                let ours = GnttabCopyPtr {
                    u: ma >> 12,
                    domid: DomId::SELF.0,
                    offset: (ma & 0xfff) as u16,
                    _pad: 0,
                };
                let theirs = GnttabCopyPtr {
                    u: u64::from(s.gref.0),
                    domid: self.dom,
                    offset: (s.offset + done) as u16,
                    _pad: 0,
                };
                let (source, dest, flags) = if to_guest {
                    (ours, theirs, GNTCOPY_DEST_GREF)
                } else {
                    (theirs, ours, GNTCOPY_SOURCE_GREF)
                };
                ops.push(GnttabCopy {
                    source,
                    dest,
                    len: n as u16,
                    flags,
                    status: 0,
                    _pad: 0,
                })
                .map_err(|_| BadGrant)?;
                done += n;
            }
            at += s.len;
        }
        gnttab::copy(&mut ops).map_err(|_| BadGrant)?;
        self.copies += ops.len() as u64;
        if ops.iter().all(|o| o.status == GNTST_OKAY) {
            Ok(())
        } else {
            Err(BadGrant)
        }
    }
}

impl GrantIo for CopyGrants {
    fn gather(&mut self, spans: &[blkback::GrantSpan], buf: &mut [u8]) -> Result<(), BadGrant> {
        self.batch(spans, buf.as_mut_ptr(), buf.len(), false)
    }
    fn scatter(&mut self, spans: &[blkback::GrantSpan], data: &[u8]) -> Result<(), BadGrant> {
        self.batch(spans, data.as_ptr(), data.len(), true)
    }
    fn read(&mut self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), BadGrant> {
        if offset + buf.len() > PAGE {
            return Err(BadGrant);
        }
        let span = blkback::GrantSpan {
            gref,
            offset,
            len: buf.len(),
        };
        self.batch(&[span], buf.as_mut_ptr(), buf.len(), false)
    }
    fn write(&mut self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), BadGrant> {
        if offset + data.len() > PAGE {
            return Err(BadGrant);
        }
        let span = blkback::GrantSpan {
            gref,
            offset,
            len: data.len(),
        };
        self.batch(&[span], data.as_ptr(), data.len(), true)
    }
}

/// A connected front-end.
pub struct Connected {
    back: BlkBack<GrantedPage>,
    grants: CopyGrants,
}

/// One virtual disk: its virtual device number and its slice of the disk.
pub struct Vbd {
    /// The virtual device number (`blkback::vdev`).
    pub vdev: u32,
    /// First sector of the slice on the real disk.
    pub start: u64,
    /// Sectors in the slice.
    pub sectors: u64,
}

impl Vbd {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            sectors: self.sectors,
            read_only: false,
            physical_sector_size: 512,
        }
    }
}

/// The block device's back-end over the real disk (none until probed).
#[derive(Default)]
pub struct Blk {
    disk: Option<VirtioDisk>,
    /// The next slice's first sector, and each slice's size.
    next: u64,
    share: u64,
}

impl Backend<GrantedPage> for Blk {
    type Device = Vbd;
    type Conn = Connected;

    fn device_type(&self) -> &'static str {
        "vbd"
    }
    fn log_name(&self) -> &'static str {
        "blkback"
    }
    fn frontend_keys(&self) -> &'static [&'static str] {
        &[
            blkback::xenbus::KEY_PROTOCOL,
            blkback::xenbus::KEY_RING_PAGE_ORDER,
        ]
    }
    fn frontend_nodes(&self, dev: &Vbd) -> Vec<(&'static str, String)> {
        Vec::from([
            ("virtual-device", format!("{}", dev.vdev)),
            ("device-type", String::from("disk")),
        ])
    }
    fn backend_nodes(&self, dev: &Vbd) -> Vec<(&'static str, String)> {
        blkback::xenbus::backend_nodes(&dev.info())
    }
    fn accept(&mut self, _dev: &Vbd, front: &Frontend<'_>) -> Result<(), String> {
        // Protocol and ring order; ring-ref and event-channel were checked
        // by the framework.
        blkback::xenbus::parse_frontend(|k| front.get(k))
            .map(drop)
            .map_err(|e| format!("{e}"))
    }
    fn connect(
        &mut self,
        dev: &mut Vbd,
        front: &Frontend<'_>,
        rings: Vec<GrantedPage>,
    ) -> Result<Connected, String> {
        let page = rings.into_iter().next().ok_or("no ring")?;
        Ok(Connected {
            back: BlkBack::new(page, dev.info()),
            grants: CopyGrants {
                dom: front.domid,
                copies: 0,
            },
        })
    }
    fn serve(&mut self, dev: &mut Vbd, conn: &mut Connected) -> Result<Work, &'static str> {
        let disk = self.disk.as_mut().ok_or("no disk")?;
        let mut slice = Slice {
            disk,
            start: dev.start,
            sectors: dev.sectors,
        };
        // Requests wait in the ring while the heap has no room for the
        // staging buffer (grown once, then never again).
        let w = conn
            .back
            .process_gated(&mut slice, &mut conn.grants, &|n| crate::heap_gate(n, 0))
            .map_err(|fatal| fatal.as_str())?;
        Ok(Work {
            notify: w.notify,
            more: w.more,
        })
    }
    fn connected_note(&self, dev: &Vbd) -> String {
        format!(" ({} sectors at {})", dev.sectors, dev.start)
    }
    fn disconnected(&mut self, _dev: &mut Vbd, conn: Connected) -> String {
        let s = conn.back.stats();
        format!(
            "{} requests ({} reads, {} writes, {} flushes), {} refused, {} grant errors",
            s.requests,
            s.reads,
            s.writes,
            s.flushes,
            s.invalid + s.unsupported,
            s.grant_errors
        )
    }
}

/// Set by the disk's interrupt (its pirq's event channel).
static DISK_IRQ: AtomicBool = AtomicBool::new(false);

fn disk_irq(port: pv_guest_kernel::Port) {
    DISK_IRQ.store(true, Ordering::SeqCst);
    crate::kick(port);
}

/// The block driver: the real disk, its interrupt, and the virtual disks
/// carved from it.
pub struct Disks {
    vbds: CmdlineDevices<Blk>,
    pirq: u32,
    interrupts: u64,
}

impl Default for Disks {
    fn default() -> Self {
        Self {
            vbds: CmdlineDevices::new(Blk::default(), "vbd", make_vbd),
            pirq: u32::MAX,
            interrupts: 0,
        }
    }
}

/// `vbd=NAME[:VDEV]`: the next equal slice of the disk, as `VDEV`
/// (default `xvda`).
fn make_vbd(b: &mut Blk, arg: &str) -> Result<(u32, Vbd), String> {
    let name = if arg.is_empty() { DEFAULT_VDEV } else { arg };
    let vdev = blkback::vdev::parse(name).map_err(|e| format!("'{name}': {e}"))?;
    let start = b.next;
    b.next += b.share;
    Ok((
        vdev,
        Vbd {
            vdev,
            start,
            sectors: b.share,
        },
    ))
}

impl Driver for Disks {
    /// With `vbd=a,b` on the command line: probes the virtio disk, routes
    /// its interrupt to an event channel, and gives each named domain an
    /// equal slice of it as a virtual disk, `xvda` or the one an entry
    /// names as xl's `vdev` does (`vbd=a:hda,b:xvdb`; `blkback::vdev`).
    fn setup(&mut self, env: &mut Env<'_>) {
        let names = env.list("vbd");
        if names.is_empty() {
            return;
        }
        let mut disk = match crate::disk::probe() {
            Ok(d) => d,
            Err(e) => {
                println!("service: no disk: {e}");
                return;
            }
        };
        let total = disk.sectors();
        println!(
            "service: virtio-blk in slot {} at {:#x} ({} sectors, flush {}), GSI {}",
            disk.slot(),
            disk.mmio_base(),
            total,
            disk.has_flush(),
            disk.gsi()
        );
        match events::bind_gsi(disk.gsi(), disk_irq) {
            Ok((pirq, port)) => {
                println!(
                    "service: disk interrupt GSI {} bound as pirq {pirq} to port {port}",
                    disk.gsi()
                );
                self.pirq = pirq;
            }
            Err(e) => println!("service: disk interrupt GSI {}: {e:?}", disk.gsi()),
        }
        // With `bench=1` the second half of the disk is the service domain's
        // own, for the direct-access baseline of the block benchmark.
        let bench = !env.list("bench").is_empty();
        let usable = if bench { total / 2 } else { total };
        if bench {
            let figures = crate::bench::direct(&mut disk, total / 2);
            for len in [8u16, 4096] {
                if let Some(ns) = crate::bench::copy_cost(len) {
                    println!(
                        "bench: GNTTABOP_copy of {len} bytes between two of its own frames: {ns} ns per call"
                    );
                }
            }
            for name in &names {
                let name = name.split(':').next().unwrap_or("");
                if let Some(d) = env.domain(name).map(|d| d.domid) {
                    for (key, ns) in &figures {
                        let _ = env.io.store.local.write(
                            env.io.store.xs,
                            &format!("/local/domain/{d}/bench/{key}"),
                            format!("{ns}").as_bytes(),
                        );
                    }
                }
            }
        }
        let b = self.vbds.devices_mut().backend_mut();
        b.disk = Some(disk);
        b.share = usable / names.len() as u64;
        b.next = 0;
        self.vbds.create(env);
    }
    fn poll(&mut self) {
        if DISK_IRQ.swap(false, Ordering::SeqCst)
            && let Some(d) = self.vbds.devices_mut().backend_mut().disk.as_mut()
        {
            d.ack_interrupt();
            self.interrupts += 1;
            let _ = events::pirq_eoi(self.pirq);
        }
    }
    fn wants_step(&self) -> bool {
        self.vbds.wants_step()
    }
    fn step(&mut self, io: &mut Io<'_>) -> bool {
        self.vbds.step(io)
    }
    fn serve(&mut self, io: &mut Io<'_>) -> bool {
        self.vbds.serve(io)
    }
    fn domain_died(&mut self, dom: u16, io: &mut Io<'_>) {
        self.vbds.domain_died(dom, io);
    }
    fn finish(&mut self) {
        if self.vbds.devices().backend().disk.is_none() {
            return;
        }
        println!(
            "service: disk interrupts delivered as events: {}",
            self.interrupts
        );
        if self.interrupts > 0 {
            println!("service: disk interrupts arrive through the event channel");
        }
    }
}
