//! memory_op: a domain's reservation — increase/decrease_reservation,
//! populate_physmap, current/maximum_reservation, memory_map, and the M2P
//! queries. Enforces the manifest's memory limit; frames given back are
//! scrubbed before the allocator reuses them. Ownership and type checks are
//! the frame table's (a frame still used as a page table cannot be given
//! back).

use crate::domain::Hv;
use crate::hcall::Flow;
use crate::mm::{self, PAGE, frames, guest};
use guest_abi::errno::Errno;
use microvisor_core::reservation::{self, Outcome, Reservation, Target};

const DOMID_SELF: u16 = 0x7FF0;

/// The domain index an argument names (`microvisor_core::reservation::target`).
fn target(hv: &Hv, domid: u16) -> Result<usize, Errno> {
    let d = hv.cur_dom();
    match reservation::target(d.id, d.privileged, domid)? {
        Target::Caller => Ok(hv.cur_dom_idx()),
        Target::Other(id) => hv
            .domains
            .iter()
            .position(|d| d.id == id && d.is_live())
            .ok_or(Errno::ESRCH),
    }
}

/// `XENMEM_add_to_physmap`: a PV domain has no physmap to add to, so once
/// the argument is read and its domain found, Xen 4.17 answers `EACCES`
/// (`xatp_permission_check` refuses every domain that is not translated),
/// whatever the space: a PV guest finds its grant and status frames with
/// `setup_table` and `get_status_frames` and maps them itself. Before that,
/// Xen's order: `EDOM` for a continuation count beyond 16 bits, `EFAULT`,
/// `ENOSYS` for `XENMAPSPACE_gmfn_foreign`, `ESRCH` for no such domain.
fn add_to_physmap(hv: &Hv, cr3: u64, start: u64, arg: u64) -> Result<Flow, Errno> {
    use guest_abi::memory as m;
    if start > u64::from(u16::MAX) {
        return Err(Errno::EDOM);
    }
    let xatp: m::XenAddToPhysmap = guest::read(cr3, arg)?;
    if xatp.space == m::XENMAPSPACE_GMFN_FOREIGN {
        return Err(Errno::ENOSYS);
    }
    let me = hv.domains[hv.current].id;
    let exists = xatp.domid == DOMID_SELF
        || xatp.domid == me
        || hv.domains.iter().any(|d| d.id == xatp.domid && d.is_live());
    if !exists {
        return Err(Errno::ESRCH);
    }
    Err(Errno::EACCES)
}

/// memory_op(cmd, arg). The reservation operations run over any number of
/// extents: a long list stops for whatever is due and continues as Xen's
/// does, the extents done so far encoded in `cmd` above its low 6 bits
/// (`MEMOP_EXTENT_SHIFT`); the final result counts every extent done.
pub fn memory_op(hv: &mut Hv, cmd: u64, arg: u64) -> Result<Flow, Errno> {
    let cur = hv.current;
    let cr3 = hv.vcpus[cur].cr3;
    let (op, start) = reservation::split_cmd(cmd);
    use guest_abi::memory as m;
    match op {
        m::XENMEM_INCREASE_RESERVATION
        | m::XENMEM_DECREASE_RESERVATION
        | m::XENMEM_POPULATE_PHYSMAP => {
            // As Xen's, these never answer an error code: a refusal
            // answers the extents done, `start` before the first one.
            let mut b = [0u8; 32];
            if guest::copy_from(cr3, arg, &mut b).is_err() {
                return Ok(Flow::Ret(start));
            }
            let r = Reservation::parse(&b);
            let (me, privileged) = (hv.cur_dom().id, hv.cur_dom().privileged);
            let find = |id: u16| hv.domains.iter().position(|d| d.id == id && d.is_live());
            // The domain whose reservation changes: the caller, or the
            // live domain a privileged caller names (as Xen: its frames,
            // counted against its limit; the extent list is the caller's).
            let dom = match reservation::admit(&r, start, me, privileged, find) {
                Ok(Target::Caller) => hv.cur_dom_idx(),
                Ok(Target::Other(i)) => i,
                Err(_) => return Ok(Flow::Ret(start)),
            };
            let out = reservation::run(
                &r,
                start,
                &mut ListCall {
                    hv,
                    cr3,
                    op,
                    order: r.order,
                    dom,
                },
            );
            match out {
                Outcome::Done(n) => Ok(Flow::Ret(n)),
                Outcome::Again(done) => Ok(Flow::Again([
                    reservation::continuation(op, done),
                    arg,
                    0,
                    0,
                    0,
                ])),
            }
        }
        m::XENMEM_CURRENT_RESERVATION | m::XENMEM_MAXIMUM_RESERVATION | m::XENMEM_MAXIMUM_GPFN => {
            let mut b = [0u8; 2];
            guest::copy_from(cr3, arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let t = target(hv, u16::from_le_bytes(b))?;
            let d = &hv.domains[t];
            Ok(Flow::Ret(
                reservation::stat(op, d.tot_pages, d.max_pages).ok_or(Errno::ENOSYS)?,
            ))
        }
        m::XENMEM_MAXIMUM_RAM_PAGE => Ok(Flow::Ret(mm::max_phys() / PAGE - 1)),
        m::XENMEM_ADD_TO_PHYSMAP => add_to_physmap(hv, cr3, start, arg),
        m::XENMEM_MEMORY_MAP => {
            // No map set by a toolstack: one RAM region covering the
            // domain's maximum reservation, as Xen fabricates for PV.
            let mut b = [0u8; 16];
            guest::copy_from(cr3, arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let room = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let buffer = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
            if room < 1 {
                return Err(Errno::EINVAL);
            }
            let mut e = [0u8; 20];
            e[8..16].copy_from_slice(&(hv.cur_dom().max_pages * PAGE).to_le_bytes());
            e[16..20].copy_from_slice(&1u32.to_le_bytes());
            guest::copy_to(cr3, buffer, &e).map_err(|_| Errno::EFAULT)?;
            guest::copy_to(cr3, arg, &1u32.to_le_bytes()).map_err(|_| Errno::EFAULT)?;
            Ok(Flow::Ret(0))
        }
        m::XENMEM_MACHPHYS_MAPPING => {
            let mut b = [0u8; 24];
            b[..8].copy_from_slice(&frames::M2P_VA.to_le_bytes());
            b[8..16].copy_from_slice(&(frames::M2P_VA + mm::max_phys() / PAGE * 8).to_le_bytes());
            b[16..24].copy_from_slice(&(mm::max_phys() / PAGE - 1).to_le_bytes());
            guest::copy_to(cr3, arg, &b).map_err(|_| Errno::EFAULT)?;
            Ok(Flow::Ret(0))
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// One extent-list call in progress, for `reservation::run`.
struct ListCall<'a> {
    hv: &'a mut Hv,
    /// The caller's page tables: the extent list is in its memory.
    cr3: u64,
    op: u32,
    order: u32,
    /// Index in `Hv::domains` of the domain whose reservation changes.
    dom: usize,
}

impl reservation::Extents for ListCall<'_> {
    fn preempt(&mut self) -> bool {
        crate::mmu::should_preempt(self.hv)
    }
    fn extent(&mut self, slot: u64) -> Result<(), Errno> {
        use guest_abi::memory as m;
        let (hv, cr3, dom) = (&mut *self.hv, self.cr3, self.dom);
        let populate = self.op == m::XENMEM_POPULATE_PHYSMAP;
        match self.op {
            m::XENMEM_DECREASE_RESERVATION => decrease_extent(hv, cr3, dom, slot, self.order),
            _ if self.order > 0 => increase_extent(hv, cr3, dom, slot, self.order, populate),
            _ => increase_one(hv, cr3, dom, slot, populate),
        }
    }
}

/// Gives back an extent of `2^order` frames, the first named by machine
/// frame number (as PV guests do) in the slot, frame by frame as Xen's
/// `decrease_reservation` does: the first frame refused ends the extent as
/// failed, the frames before it given back. The frames must be domain
/// index `di`'s; the slot is read through the caller's `cr3`.
fn decrease_extent(hv: &mut Hv, cr3: u64, di: usize, slot: u64, order: u32) -> Result<(), Errno> {
    let dom = hv.domains[di].id;
    let first = guest::read::<u64>(cr3, slot)?;
    for j in 0..1u64 << order {
        let mfn = first.checked_add(j).ok_or(Errno::EINVAL)?;
        let frame = frames::release(mfn, dom)?;
        frames::set_m2p(mfn, u64::MAX);
        frame.free();
        hv.domains[di].tot_pages -= 1;
    }
    Ok(())
}

/// Adds one extent of `2^order` machine-contiguous frames, aligned to its
/// size, within the domain's limit; the slot receives the first frame.
/// For populate_physmap the slot first holds the pfn the extent backs
/// (M2P set for each of its frames). The frames go to domain index `di`,
/// within its limit; the slot is the caller's (`cr3`).
fn increase_extent(
    hv: &mut Hv,
    cr3: u64,
    di: usize,
    slot: u64,
    order: u32,
    populate: bool,
) -> Result<(), Errno> {
    let dom = hv.domains[di].id;
    let n = 1u64 << order;
    reservation::room(hv.domains[di].tot_pages, hv.domains[di].max_pages, n)?;
    let held = guest::read::<u64>(cr3, slot);
    let pfn = if populate { Some(held?) } else { None };
    // Check the slot is writable before taking frames.
    guest::copy_to(cr3, slot, &held.unwrap_or(0).to_le_bytes()).map_err(|_| Errno::EFAULT)?;
    let extent = mm::Owned::alloc_zeroed(n, n).ok_or(Errno::ENOMEM)?;
    let first = extent.first();
    // An error cannot happen for frames just taken from the allocator;
    // everything goes back rather than leave a half-owned extent.
    frames::assign(extent, dom).map_err(|(extent, e)| {
        extent.free();
        e
    })?;
    if let Some(p) = pfn {
        for j in 0..n {
            frames::set_m2p(first + j, p.wrapping_add(j));
        }
    }
    hv.domains[di].tot_pages += n;
    guest::copy_to(cr3, slot, &first.to_le_bytes()).map_err(|_| Errno::EFAULT)
}

/// Adds one frame to domain index `di`, within its limit. For
/// populate_physmap the slot (the caller's, `cr3`) holds the pfn it backs
/// (M2P set) and receives the mfn.
fn increase_one(hv: &mut Hv, cr3: u64, di: usize, slot: u64, populate: bool) -> Result<(), Errno> {
    let dom = hv.domains[di].id;
    reservation::room(hv.domains[di].tot_pages, hv.domains[di].max_pages, 1)?;
    let pfn = if populate {
        Some(guest::read::<u64>(cr3, slot)?)
    } else {
        None
    };
    // Check the slot is writable before taking a frame.
    guest::copy_to(
        cr3,
        slot,
        &guest::read::<u64>(cr3, slot).unwrap_or(0).to_le_bytes(),
    )
    .map_err(|_| Errno::EFAULT)?;
    let mfn = mm::alloc_zeroed().ok_or(Errno::ENOMEM)?;
    if let Err(e) = frames::with(|ft, _| ft.assign(mfn, dom)) {
        let _ = mm::with_allocator(|a| a.free(mfn));
        return Err(e);
    }
    if let Some(p) = pfn {
        frames::set_m2p(mfn, p);
    }
    hv.domains[di].tot_pages += 1;
    guest::copy_to(cr3, slot, &mfn.to_le_bytes()).map_err(|_| Errno::EFAULT)
}
