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
use microvisor_core::reservation::{self, Account, Outcome, Reservation, Target};

const DOMID_SELF: u16 = 0x7FF0;

/// The domain index an argument names (`microvisor_core::reservation::target`).
fn target(hv: &Hv, domid: u16) -> Result<usize, Errno> {
    let d = hv.cur_dom();
    match reservation::target(d.id(), d.privileged(), domid)? {
        Target::Caller => Ok(hv.cur_dom_idx()),
        Target::Other(id) => hv.live_domain(id).ok_or(Errno::ESRCH),
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
    let me = hv.cur_dom().id();
    let exists =
        xatp.domid == DOMID_SELF || xatp.domid == me || hv.live_domain(xatp.domid).is_some();
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
    let cur = hv.current_index();
    let cr3 = hv.vcpu(cur).cr3();
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
            let (me, privileged) = (hv.cur_dom().id(), hv.cur_dom().privileged());
            let find = |id: u16| hv.live_domain(id);
            // The domain whose reservation changes: the caller, or the
            // live domain a privileged caller names (as Xen: its frames,
            // counted against its limit; the extent list is the caller's).
            let dom = match reservation::admit(&r, start, me, privileged, find) {
                Ok(Target::Caller) => hv.cur_dom_idx(),
                Ok(Target::Other(i)) => i,
                Err(_) => return Ok(Flow::Ret(start)),
            };
            let d = hv.dom(dom);
            let hv = &*hv;
            let out = reservation::run(
                &r,
                start,
                &mut ListCall {
                    cr3,
                    op,
                    order: r.order,
                    dom: d.id(),
                    pages: d.pages(),
                    preempt: || crate::mmu::should_preempt(hv),
                },
            );
            Ok(list_flow(op, arg, out))
        }
        m::XENMEM_CURRENT_RESERVATION | m::XENMEM_MAXIMUM_RESERVATION | m::XENMEM_MAXIMUM_GPFN => {
            let mut b = [0u8; 2];
            guest::copy_from(cr3, arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let t = target(hv, u16::from_le_bytes(b))?;
            let pages = hv.dom(t).pages();
            Ok(Flow::Ret(
                reservation::stat(op, pages.tot(), pages.max()).ok_or(Errno::ENOSYS)?,
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
            e[8..16].copy_from_slice(&(hv.cur_dom().pages().max() * PAGE).to_le_bytes());
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

/// An extent-list call's answer: the extents done, or its continuation.
fn list_flow(op: u32, arg: u64, out: Outcome) -> Flow {
    match out {
        Outcome::Done(n) => Flow::Ret(n),
        Outcome::Again(done) => Flow::Again([reservation::continuation(op, done), arg, 0, 0, 0]),
    }
}

/// increase_reservation, decrease_reservation and populate_physmap on the
/// caller's own domain, without the hypervisor lock (docs/smp.md, "Memory
/// accounting"): the caller's domain and page tables come from its
/// `VcpuLight`, its accounting from `domain::account`, and each extent
/// touches nothing of `Hv`. `None`, having done nothing the guest can see,
/// for any other call, one naming another domain, or one at an order
/// above a guest's maximum (there the caller's privilege decides, which
/// only `Hv` knows): those take the locked path. A continuation is
/// arranged by the caller under the hypervisor lock.
pub fn memory_op_unlocked(cmd: u64, arg: u64) -> Option<Result<Flow, Errno>> {
    use guest_abi::memory as m;
    let (op, start) = reservation::split_cmd(cmd);
    if !matches!(
        op,
        m::XENMEM_INCREASE_RESERVATION
            | m::XENMEM_DECREASE_RESERVATION
            | m::XENMEM_POPULATE_PHYSMAP
    ) {
        return None;
    }
    let light = crate::domain::held_light()?;
    let me = light.dom.load(core::sync::atomic::Ordering::Relaxed);
    let cr3 = light.cr3.load(core::sync::atomic::Ordering::Relaxed);
    let mut b = [0u8; 32];
    if guest::copy_from(cr3, arg, &mut b).is_err() {
        return Some(Ok(Flow::Ret(start)));
    }
    let r = Reservation::parse(&b);
    if (r.domid != DOMID_SELF && r.domid != me) || r.order > reservation::DOMU_MAX_ORDER {
        return None;
    }
    let pages = crate::domain::account(me)?;
    // The caller's own domain at an order any caller may use: its
    // privilege plays no part in `admit`'s answer, and `find` is never
    // asked.
    if reservation::admit(&r, start, me, false, |_| None::<()>).is_err() {
        return Some(Ok(Flow::Ret(start)));
    }
    let out = reservation::run(
        &r,
        start,
        &mut ListCall {
            cr3,
            op,
            order: r.order,
            dom: me,
            pages,
            preempt: crate::mmu::should_preempt_unlocked,
        },
    );
    Some(Ok(list_flow(op, arg, out)))
}

/// One extent-list call in progress, for `reservation::run`.
struct ListCall<P> {
    /// The caller's page tables: the extent list is in its memory.
    cr3: u64,
    op: u32,
    order: u32,
    /// The domain whose reservation changes, and its accounting.
    dom: u16,
    pages: &'static Account,
    /// Whether to stop for a continuation (with or without the
    /// hypervisor lock).
    preempt: P,
}

impl<P: FnMut() -> bool> reservation::Extents for ListCall<P> {
    fn preempt(&mut self) -> bool {
        (self.preempt)()
    }
    fn extent(&mut self, slot: u64) -> Result<(), Errno> {
        use guest_abi::memory as m;
        let (cr3, dom, pages) = (self.cr3, self.dom, self.pages);
        let populate = self.op == m::XENMEM_POPULATE_PHYSMAP;
        // Held shared over the extent, so the audit (which holds it alone)
        // never sees frames counted and not yet assigned, or given back
        // and still counted.
        let _ops = frames::operation();
        match self.op {
            m::XENMEM_DECREASE_RESERVATION => decrease_extent(cr3, dom, pages, slot, self.order),
            _ => increase_extent(cr3, dom, pages, slot, self.order, populate),
        }
    }
}

/// Gives back an extent of `2^order` frames, the first named by machine
/// frame number (as PV guests do) in the slot, frame by frame as Xen's
/// `decrease_reservation` does: the first frame refused ends the extent as
/// failed, the frames before it given back. The frames must be domain
/// `dom`'s, each uncounted from `pages` once the frame table has taken it
/// back; the slot is read through the caller's `cr3`.
fn decrease_extent(
    cr3: u64,
    dom: u16,
    pages: &Account,
    slot: u64,
    order: u32,
) -> Result<(), Errno> {
    let first = guest::read::<u64>(cr3, slot)?;
    for j in 0..1u64 << order {
        let mfn = first.checked_add(j).ok_or(Errno::EINVAL)?;
        let frame = frames::release(mfn, dom)?;
        frames::set_m2p(mfn, u64::MAX);
        frame.free();
        if !pages.give(1) {
            crate::warn!(
                "domain {dom}: frame {mfn:#x} given back, but its reservation counted none"
            );
        }
    }
    Ok(())
}

/// Adds one extent of `2^order` frames to domain `dom`, within its limit:
/// the frames are counted in `pages` first (the limit checked in the same
/// atomic step, `Account::take`) and the count given back if they cannot
/// be had or the slot is unusable. An extent above order 0 is
/// machine-contiguous and aligned to its size. For populate_physmap the
/// slot (the caller's, `cr3`) first holds the pfn the extent backs (M2P
/// set for each of its frames); it receives the first frame.
fn increase_extent(
    cr3: u64,
    dom: u16,
    pages: &Account,
    slot: u64,
    order: u32,
    populate: bool,
) -> Result<(), Errno> {
    let n = 1u64 << order;
    pages.take(n)?;
    let first = match assign_extent(cr3, dom, slot, order, populate) {
        Ok(first) => first,
        Err(e) => {
            pages.give(n);
            return Err(e);
        }
    };
    guest::copy_to(cr3, slot, &first.to_le_bytes()).map_err(|_| Errno::EFAULT)
}

/// The frames of [`increase_extent`], assigned to `dom` (M2P set for
/// populate_physmap): the first one's number, or an error with nothing
/// assigned.
fn assign_extent(cr3: u64, dom: u16, slot: u64, order: u32, populate: bool) -> Result<u64, Errno> {
    let n = 1u64 << order;
    let held = guest::read::<u64>(cr3, slot);
    let pfn = if populate { Some(held?) } else { None };
    // Check the slot is writable before taking frames.
    guest::copy_to(cr3, slot, &held.unwrap_or(0).to_le_bytes()).map_err(|_| Errno::EFAULT)?;
    let first = if order == 0 {
        let mfn = mm::alloc_zeroed().ok_or(Errno::ENOMEM)?;
        if let Err(e) = frames::with(|ft, _| ft.assign(mfn, dom)) {
            let _ = mm::with_allocator(|a| a.free(mfn));
            return Err(e);
        }
        mfn
    } else {
        let extent = mm::Owned::alloc_zeroed(n, n).ok_or(Errno::ENOMEM)?;
        let first = extent.first();
        // An error cannot happen for frames just taken from the allocator;
        // everything goes back rather than leave a half-owned extent.
        frames::assign(extent, dom).map_err(|(extent, e)| {
            extent.free();
            e
        })?;
        first
    };
    if let Some(p) = pfn {
        for j in 0..n {
            frames::set_m2p(first + j, p.wrapping_add(j));
        }
    }
    Ok(first)
}
