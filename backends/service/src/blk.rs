//! Block back-end glue in the service domain (the role of Xen's blkback
//! driver plus the toolstack's disk setup): creates each virtual disk's
//! xenstore directories, follows the xenbus handshake with the front-end,
//! maps the front-end's ring by grant, binds its event channel, and serves
//! requests with `blkback` over a slice of the real disk, moving data with
//! `GNTTABOP_copy` (so the back-end never maps guest data pages).
//!
//! Everything the front-end writes (xenstore nodes, ring, grants) is
//! hostile: a malformed handshake closes only that device; a broken ring
//! (producer index past the ring) disconnects only that device.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use blkback::{BadGrant, BlkBack, DeviceInfo, Disk, DiskError, GrantIo};
use guest_abi::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_OKAY, GnttabCopy, GnttabCopyPtr,
};
use guest_abi::io::xenbus::XenbusState;
use guest_abi::types::{DomId, GrantRef};
use pv_guest_kernel::{events, gnttab, mm};
use xenstore::Xenstore;

use crate::store::Local;

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
    pub back: BlkBack<gnttab::GrantedPage>,
    pub port: u32,
    pub grants: CopyGrants,
}

/// One virtual disk.
pub struct Vbd {
    pub fe_dom: u16,
    pub name: String,
    pub be_path: String,
    pub fe_path: String,
    pub start: u64,
    pub sectors: u64,
    pub conn: Option<Connected>,
    /// Where its ring is mapped in our address space.
    ring_slot: u64,
    closed: bool,
    /// Closed because the front-end closed: a new connection may follow
    /// (`blkback::xenbus::reopens`).
    reopenable: bool,
    /// The front-end broke its ring: never reconnect it, but still follow
    /// it to Closed.
    failed: bool,
    /// A state to publish at the next step (after a failure in `serve`,
    /// which has no access to the store).
    announce: Option<XenbusState>,
}

fn state_text(s: XenbusState) -> String {
    format!("{}", s as u32)
}

impl Vbd {
    /// The toolstack's part: the front-end's `device/vbd/<vdev>` and our
    /// `backend/vbd/<dom>/<vdev>` directories, each readable by the other
    /// side, and our device nodes; the back-end then waits in InitWait.
    /// `vdev` is the virtual device number (`blkback::vdev::parse`).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        xs: &mut Xenstore,
        local: &mut Local,
        fe_dom: u16,
        name: &str,
        vdev: u32,
        start: u64,
        sectors: u64,
        ring_slot: u64,
    ) -> Result<Self, guest_abi::errno::Errno> {
        let be_path = format!("/local/domain/0/backend/vbd/{fe_dom}/{vdev}");
        let fe_path = format!("/local/domain/{fe_dom}/device/vbd/{vdev}");
        let fe_perms = format!("n{fe_dom}\0r0\0");
        let be_perms = format!("n0\0r{fe_dom}\0");
        local.write(xs, &format!("{fe_path}/backend"), be_path.as_bytes())?;
        local.write(xs, &format!("{fe_path}/backend-id"), b"0")?;
        local.write(
            xs,
            &format!("{fe_path}/state"),
            state_text(XenbusState::Initialising).as_bytes(),
        )?;
        local.write(
            xs,
            &format!("{fe_path}/virtual-device"),
            format!("{vdev}").as_bytes(),
        )?;
        local.write(xs, &format!("{fe_path}/device-type"), b"disk")?;
        for n in [
            "",
            "/backend",
            "/backend-id",
            "/state",
            "/virtual-device",
            "/device-type",
        ] {
            local.set_perms(xs, &format!("{fe_path}{n}"), fe_perms.as_bytes())?;
        }
        local.set_perms(
            xs,
            &format!("/local/domain/{fe_dom}/device"),
            fe_perms.as_bytes(),
        )?;
        local.set_perms(
            xs,
            &format!("/local/domain/{fe_dom}/device/vbd"),
            fe_perms.as_bytes(),
        )?;
        let info = DeviceInfo {
            sectors,
            read_only: false,
            physical_sector_size: 512,
        };
        local.write(xs, &format!("{be_path}/frontend"), fe_path.as_bytes())?;
        local.write(
            xs,
            &format!("{be_path}/frontend-id"),
            format!("{fe_dom}").as_bytes(),
        )?;
        for (k, v) in blkback::xenbus::backend_nodes(&info) {
            local.write(xs, &format!("{be_path}/{k}"), v.as_bytes())?;
        }
        local.write(
            xs,
            &format!("{be_path}/state"),
            state_text(XenbusState::InitWait).as_bytes(),
        )?;
        // Everything under the back-end directory readable by the front-end.
        let mut nodes: Vec<String> = Vec::from([
            String::new(),
            String::from("/frontend"),
            String::from("/frontend-id"),
            String::from("/state"),
        ]);
        for (k, _) in blkback::xenbus::backend_nodes(&info) {
            nodes.push(format!("/{k}"));
        }
        for n in nodes {
            local.set_perms(xs, &format!("{be_path}{n}"), be_perms.as_bytes())?;
        }
        Ok(Self {
            fe_dom,
            name: String::from(name),
            be_path,
            fe_path,
            start,
            sectors,
            conn: None,
            ring_slot,
            closed: false,
            reopenable: false,
            failed: false,
            announce: None,
        })
    }

    fn set_state(&self, xs: &mut Xenstore, local: &mut Local, s: XenbusState) {
        let _ = local.write(
            xs,
            &format!("{}/state", self.be_path),
            state_text(s).as_bytes(),
        );
    }

    /// Follows the front-end's state: connects when it is Initialised,
    /// disconnects when it closes. Returns whether something changed.
    pub fn step(
        &mut self,
        xs: &mut Xenstore,
        local: &mut Local,
        kick: events::PortHandler,
    ) -> bool {
        let mut changed = false;
        if let Some(s) = self.announce.take() {
            self.set_state(xs, local, s);
            changed = true;
        }
        if self.closed && !self.reopenable {
            return changed;
        }
        let front = local
            .read(xs, &format!("{}/state", self.fe_path))
            .ok()
            .and_then(|t| XenbusState::parse(&t))
            .unwrap_or(XenbusState::Unknown);
        if self.closed {
            if blkback::xenbus::reopens(front) {
                self.closed = false;
                self.reopenable = false;
                self.set_state(xs, local, XenbusState::InitWait);
                pv_guest_kernel::println!(
                    "blkback: {}: front-end starts again; back-end in InitWait",
                    self.name
                );
                return true;
            }
            return changed;
        }
        match blkback::xenbus::on_frontend_state(front) {
            blkback::xenbus::BackendStep::Connect if self.conn.is_none() && !self.failed => {
                match self.connect(xs, local, kick) {
                    Ok(()) => {
                        self.set_state(xs, local, XenbusState::Connected);
                        pv_guest_kernel::println!(
                            "blkback: {} connected ({} sectors at {})",
                            self.name,
                            self.sectors,
                            self.start
                        );
                        true
                    }
                    Err(why) => {
                        pv_guest_kernel::println!("blkback: {}: cannot connect: {why}", self.name);
                        self.set_state(xs, local, XenbusState::Closed);
                        self.closed = true;
                        true
                    }
                }
            }
            blkback::xenbus::BackendStep::Disconnect(s)
                if self.conn.is_some() || s == XenbusState::Closed =>
            {
                self.disconnect();
                self.set_state(xs, local, s);
                if s == XenbusState::Closed {
                    self.closed = true;
                    self.reopenable = !self.failed;
                }
                true
            }
            _ => changed,
        }
    }

    /// True when a state must be published without waiting for the store
    /// to change.
    pub fn wants_step(&self) -> bool {
        self.announce.is_some()
    }

    fn connect(
        &mut self,
        xs: &mut Xenstore,
        local: &mut Local,
        kick: events::PortHandler,
    ) -> Result<(), String> {
        use blkback::xenbus::{KEY_EVENT_CHANNEL, KEY_PROTOCOL, KEY_RING_PAGE_ORDER, KEY_RING_REF};
        let nodes = crate::store::read_nodes(
            xs,
            local,
            &self.fe_path,
            &[
                KEY_RING_REF,
                KEY_EVENT_CHANNEL,
                KEY_PROTOCOL,
                KEY_RING_PAGE_ORDER,
            ],
        );
        let cfg = blkback::xenbus::parse_frontend(|k| {
            nodes.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
        })
        .map_err(|e| format!("{e:?}"))?;
        let (page, port) = crate::store::attach_ring(
            self.fe_dom,
            cfg.ring_ref.0,
            cfg.event_channel.0,
            self.ring_slot,
            kick,
        )?;
        let info = DeviceInfo {
            sectors: self.sectors,
            read_only: false,
            physical_sector_size: 512,
        };
        self.conn = Some(Connected {
            back: BlkBack::new(page, info),
            port,
            grants: CopyGrants {
                dom: self.fe_dom,
                copies: 0,
            },
        });
        Ok(())
    }

    /// Its front-end's domain has ended: drop the connection and never step
    /// again (the dead domain's store nodes may still read Connected, and a
    /// reconnection would map a grant of a domain that no longer exists).
    pub fn front_end_gone(&mut self) {
        self.disconnect();
        self.closed = true;
        self.reopenable = false;
        self.announce = None;
    }

    /// Drops the ring and the event channel.
    pub fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = events::close(c.port);
            let s = c.back.stats();
            pv_guest_kernel::println!(
                "blkback: {} disconnected: {} requests ({} reads, {} writes, {} flushes), {} refused, {} grant errors",
                self.name,
                s.requests,
                s.reads,
                s.writes,
                s.flushes,
                s.invalid + s.unsupported,
                s.grant_errors
            );
        }
    }

    /// Serves the ring; returns whether to look again soon.
    pub fn serve<D: Disk + ?Sized>(&mut self, disk: &mut D) -> bool {
        let (start, sectors) = (self.start, self.sectors);
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let mut slice = Slice {
            disk,
            start,
            sectors,
        };
        // Requests wait in the ring while the heap has no room for the
        // staging buffer (grown once, then never again).
        match c
            .back
            .process_gated(&mut slice, &mut c.grants, &|n| crate::heap_gate(n, 0))
        {
            Ok(w) => {
                if w.notify {
                    let _ = events::send(c.port);
                }
                w.more
            }
            Err(fatal) => {
                pv_guest_kernel::println!(
                    "blkback: {}: {fatal}; disconnecting this front-end",
                    self.name
                );
                self.disconnect();
                // Tell it (Closing) and follow it to Closed; never serve it
                // again.
                self.failed = true;
                self.announce = Some(XenbusState::Closing);
                false
            }
        }
    }
}
