//! The boot-time domain builder, following Xen's PV start-of-day contract
//! (docs/abi.md, "Start of day"): guest frames from the allocator, the ELF
//! image placed by p_paddr, p2m list, start_info, xenstore and console pages,
//! bootstrap page tables (read-only, with the hypervisor's L4 slots), stack,
//! hypercall page, shared info, and the vCPU's entry registers. The layout
//! arithmetic is `microvisor_core::layout` (host-tested); this module only
//! writes the bytes. Never maps a frame the domain does not own.

use crate::arch::desc::{GUEST_CS64, GUEST_DS};
use crate::arch::entry::TrapFrame;
use crate::domain::Domain;
use crate::mm::{self, PAGE, paging};
use core::fmt::Write;
use guest_abi::start_info::StartInfo;
use microvisor_core::layout::{Layout, LayoutInput};
use microvisor_core::manifest::DomainSpec;
use zerocopy::{FromZeros, IntoBytes};

/// A build failure, as one line.
pub type BuildError = heapless::String<200>;

fn err(args: core::fmt::Arguments) -> BuildError {
    let mut s = BuildError::new();
    let _ = s.write_fmt(args);
    s
}

/// Where the domain's frames are while it is being built.
struct Frames {
    p2m_base_pa: u64,
    nr_pages: u64,
    dom: u16,
}

impl Frames {
    fn mfn(&self, pfn: u64) -> u64 {
        mm::read_u64(self.p2m_base_pa + pfn * 8)
    }
}

/// Builds one domain from its manifest entry, image bytes and boot module
/// (`ramdisk`, the manifest's `ramdisk = FILE`), placed as Xen's toolstack
/// places it (`Layout::place_module`).
/// `extra_cmdline` is appended to the manifest's command line (the service
/// domain learns the other domains' ids and names this way). `served`: a
/// service domain will serve this domain's store and console (it is not the
/// service domain itself), so start_info names a store and both ports.
/// Returns the domain and the registers it starts with (for
/// `entry::set_frame`).
// The error is a fixed-size message (no heap at boot), built once per domain.
#[allow(clippy::result_large_err)]
pub fn build(
    id: u16,
    spec: &DomainSpec<'static>,
    image_bytes: &'static [u8],
    ramdisk: Option<&'static [u8]>,
    extra_cmdline: &str,
    served: bool,
) -> Result<(Domain, FirstVcpu, TrapFrame), BuildError> {
    let image = microvisor_core::elfimage::GuestImage::parse(image_bytes).map_err(|e| {
        err(format_args!(
            "domain '{}': image '{}': {}",
            spec.name, spec.image, e
        ))
    })?;
    let nr_pages = spec.nr_pages();
    // A kernel with the MOD_START_PFN note takes its module by pfn, outside
    // the initial mapping; any other gets it mapped after the kernel.
    let pfn_ok = image.mod_start_pfn;
    let layout = Layout::compute(&LayoutInput {
        virt_base: image.virt_base,
        virt_kstart: image.virt_kstart,
        virt_kend: image.virt_kend,
        module_len: ramdisk.filter(|_| !pfn_ok).map(|r| r.len() as u64),
        nr_pages,
    })
    .map_err(|e| err(format_args!("domain '{}': {}", spec.name, e)))?;
    let module = ramdisk
        .map(|r| layout.place_module(r.len() as u64, pfn_ok))
        .transpose()
        .map_err(|e| {
            err(format_args!(
                "domain '{}': ramdisk '{}': {}",
                spec.name, spec.ramdisk, e
            ))
        })?;
    // Every address the layout produced lies in [virt_base, v_end).
    let pfn_of = |va: u64| (va - layout.virt_base) / PAGE;

    // The p2m list is allocated contiguously so the builder can find every
    // pfn's frame through it; all other frames come one by one.
    let p2m_first = pfn_of(layout.p2m.start);
    let p2m_frames = pfn_of(layout.p2m.end) - p2m_first;
    // Written while the builder alone has it (`mm::Owned`), then given to
    // the domain whole.
    let mut p2m = mm::Owned::alloc_zeroed(p2m_frames, 1).ok_or_else(|| {
        err(format_args!(
            "domain '{}': out of memory for {} KiB",
            spec.name,
            spec.memory_bytes / 1024
        ))
    })?;
    let p2m_base = p2m.first();
    let frames = Frames {
        p2m_base_pa: p2m_base * PAGE,
        nr_pages,
        dom: id,
    };
    // Every other pfn gets a frame in a scattered order (a stride
    // permutation over the non-p2m pfns), so guest memory is deliberately
    // not machine-contiguous: guests must go through their p2m.
    let p2m_range = p2m_first..p2m_first + p2m_frames;
    for pfn in p2m_range {
        let mfn = p2m_base + (pfn - p2m_first);
        p2m.write_u64(pfn * 8, mfn);
        mm::frames::set_m2p(mfn, pfn);
    }
    let others = nr_pages - p2m_frames;
    let stride = [7919u64, 7907, 7901, 1]
        .into_iter()
        .find(|s| !others.is_multiple_of(*s) || *s == 1)
        .unwrap_or(1);
    for j in 0..others {
        let k = (j * stride) % others;
        let pfn = if k < p2m_first { k } else { k + p2m_frames };
        let mfn = mm::alloc_zeroed().ok_or_else(|| {
            err(format_args!(
                "domain '{}': out of memory for {} KiB",
                spec.name,
                spec.memory_bytes / 1024
            ))
        })?;
        p2m.write_u64(pfn * 8, mfn);
        mm::frames::with(|ft, _| ft.assign(mfn, id)).map_err(|e| {
            err(format_args!(
                "domain '{}': frame {mfn:#x} not assignable: {e:?}",
                spec.name
            ))
        })?;
        mm::frames::set_m2p(mfn, pfn);
    }
    mm::frames::assign(p2m, id).map_err(|(p2m, e)| {
        let first = p2m.first();
        p2m.free();
        err(format_args!(
            "domain '{}': p2m frames from {first:#x} not assignable: {e:?}",
            spec.name
        ))
    })?;

    // Kernel image.
    let virt_base = layout.virt_base;
    image
        .load(|va, bytes| copy_in(&frames, virt_base, va, bytes))
        .map_err(|()| {
            err(format_args!(
                "domain '{}': image segment outside the domain's memory",
                spec.name
            ))
        })?;

    // Boot module: its pages are fresh (zero) frames, so the bytes past its
    // length up to mod_len read as zero.
    if let (Some(bytes), Some(m)) = (ramdisk, module) {
        copy_in(&frames, virt_base, virt_base + m.first_pfn * PAGE, bytes).map_err(|()| {
            err(format_args!(
                "domain '{}': ramdisk outside the domain's memory",
                spec.name
            ))
        })?;
    }

    // Hypercall page.
    if let Some(hp) = image.hypercall_page {
        let mut page = [0u8; 4096];
        microvisor_core::hypercall_page::fill(&mut page);
        copy_in(&frames, virt_base, hp, &page).map_err(|()| {
            err(format_args!(
                "domain '{}': hypercall page outside memory",
                spec.name
            ))
        })?;
    }

    // Shared info: a hypervisor-allocated frame outside the pseudo-physical
    // map, all upcalls masked.
    let shared_info_mfn = mm::alloc_zeroed()
        .ok_or_else(|| err(format_args!("domain '{}': out of memory", spec.name)))?;
    // Owned by the domain (so it may map it writable), outside its p2m.
    // The hypervisor writes the page on its own until the domain dies, so it
    // holds a write reference: decrease_reservation cannot take the page
    // away, and it can never become a page table, GDT or LDT frame.
    mm::frames::with(|ft, _| ft.assign(shared_info_mfn, id))
        .map_err(|e| err(format_args!("domain '{}': shared info: {e:?}", spec.name)))?;
    let shared = mm::frames::hv_writable(shared_info_mfn, id)
        .map_err(|e| err(format_args!("domain '{}': shared info: {e:?}", spec.name)))?;
    for v in 0..32u64 {
        shared
            .u8_at(v * 64 + 1)
            .store(1, core::sync::atomic::Ordering::Relaxed);
    }
    crate::time::init_wallclock(shared);
    crate::time::update_vcpu_time(crate::domain::vcpu_info_in_shared(shared, 0));

    // Bootstrap page tables.
    let pt_first = pfn_of(layout.pt_start);
    // Each written under a writable reference (dropped before the pin
    // below validates it as a table).
    for t in 0..layout.nr_pt_frames {
        let mut table = mm::frames::WriteRef::writable(frames.mfn(pt_first + t), id)
            .map_err(|e| err(format_args!("domain '{}': page table: {e:?}", spec.name)))?;
        layout.table_entries(t, |idx, target_pfn, flags| {
            table.write_u64(idx as u64 * 8, (frames.mfn(target_pfn) * PAGE) | flags);
        });
        if t == 0 {
            for slot in paging::HV_SLOT_FIRST..=paging::HV_SLOT_LAST {
                table.write_u64(slot as u64 * 8, paging::hv_l4_entry(slot));
            }
        }
    }
    let cr3 = frames.mfn(pt_first) * PAGE;
    // Validate the bootstrap tables: pinned as an L4 (as Xen's builder does)
    // plus the reference the vCPU's base pointer holds.
    let l4 = frames.mfn(pt_first);
    mm::frames::with(|ft, mem| {
        ft.pin(mem, id, l4, 4)?;
        ft.new_baseptr(mem, id, l4, None)
    })
    .map_err(|e| {
        err(format_args!(
            "domain '{}': bootstrap page tables do not validate: {e:?}",
            spec.name
        ))
    })?;

    crate::grant::create(id).map_err(|st| {
        err(format_args!(
            "domain '{}': no memory for its grant table (status {st})",
            spec.name
        ))
    })?;

    // start_info.
    let mut si = StartInfo::new_zeroed();
    let magic = b"xen-3.0-x86_64";
    si.magic[..magic.len()].copy_from_slice(magic);
    si.nr_pages = nr_pages;
    si.shared_info = shared_info_mfn * PAGE;
    si.flags = if spec.privileged { 1 | 2 } else { 0 };
    if let Some(m) = module {
        si.mod_start = m.mod_start;
        si.mod_len = m.mod_len;
        if m.start_pfn {
            si.flags |= guest_abi::start_info::SIF_MOD_START_PFN;
        }
    }
    // Store and console as Xen's builders give them: a domU whose
    // xenstored and xenconsoled exist gets both pages and both ports (here
    // 1 and 2, allocated unbound for the service domain by
    // `connect_service`). Without a service domain nothing serves a store,
    // and the service domain's own start_info store would be served by
    // nobody either (it runs xenstore in-process): store_mfn and
    // store_evtchn stay 0, as Xen's dom0 builder leaves them, and so does
    // the console port, so that no port is advertised that nothing binds
    // (a guest's own first binding, e.g. Mini-OS's VIRQ_TIMER, gets port 1).
    // The console page itself is always given: the hypervisor drains it
    // when no back-end serves it (docs/split-drivers.md).
    if served {
        si.store_mfn = frames.mfn(pfn_of(layout.xenstore));
        si.store_evtchn = 1;
    }
    si.console.mfn = frames.mfn(pfn_of(layout.console));
    // The hypervisor drains the ring (writing out_cons) whenever no console
    // back-end has bound it, which may happen at any time until the domain
    // dies: it holds a write reference for that long.
    let console_mfn = si.console.mfn;
    let console_page = mm::frames::hv_writable(console_mfn, id)
        .map_err(|e| err(format_args!("domain '{}': console page: {e:?}", spec.name)))?;
    si.console.evtchn = if served { 2 } else { 0 };
    si.pt_base = layout.pt_start;
    si.nr_pt_frames = layout.nr_pt_frames;
    si.mfn_list = layout.p2m.start;
    let mut cmdline: heapless::Vec<u8, 1024> = heapless::Vec::new();
    let _ = cmdline.extend_from_slice(spec.cmdline.as_bytes());
    if !extra_cmdline.is_empty() {
        if !cmdline.is_empty() {
            let _ = cmdline.push(b' ');
        }
        let _ = cmdline.extend_from_slice(extra_cmdline.as_bytes());
    }
    let n = cmdline.len().min(si.cmd_line.len() - 1);
    si.cmd_line[..n].copy_from_slice(&cmdline[..n]);
    mm::frames::WriteRef::writable(frames.mfn(pfn_of(layout.start_info)), id)
        .map_err(|e| err(format_args!("domain '{}': start info: {e:?}", spec.name)))?
        .write(0, si.as_bytes());

    let frame = TrapFrame {
        rip: image.entry,
        cs: GUEST_CS64 as u64,
        rflags: 0x202,
        rsp: layout.stack_top,
        ss: GUEST_DS as u64,
        rsi: layout.start_info,
        ..TrapFrame::default()
    };
    crate::info!(
        "domain {id} ({}): {} KiB, image {:#x}-{:#x}, entry {:#x}, start_info {:#x}, {} table frames, mapped to {:#x}",
        spec.name,
        spec.memory_bytes / 1024,
        layout.kstart,
        layout.kend,
        image.entry,
        layout.start_info,
        layout.nr_pt_frames,
        layout.v_end
    );
    // Its dirty-CPU mask (docs/smp.md, "TLB coherence"). Without memory
    // for it, its flushes reach every CPU: nothing to refuse.
    let _ = crate::domain::dirty_made(id);
    // Its memory accounting, reached without the hypervisor lock by its
    // own memory_op once it runs (docs/smp.md, "Memory accounting").
    let pages = crate::domain::account_made(id).ok_or_else(|| {
        err(format_args!(
            "domain '{}': no memory for its accounting",
            spec.name
        ))
    })?;
    pages.set(nr_pages, spec.maxmem_bytes / PAGE);
    Ok((
        Domain::new(
            id,
            spec,
            pages,
            (shared_info_mfn, shared),
            (console_mfn, console_page),
            &si,
        ),
        FirstVcpu {
            cr3,
            kernel_sp: layout.stack_top,
        },
        frame,
    ))
}

/// What a new domain's vCPU 0 starts with besides its frame: its page
/// tables and kernel stack (the caller makes the `domain::Vcpu` in place;
/// the structure is too large to pass around on the boot stack).
pub struct FirstVcpu {
    pub cr3: u64,
    pub kernel_sp: u64,
}

/// Copies bytes to guest virtual `va` of a domain being built (the
/// bootstrap mapping is virt_base + pfn * 4 KiB).
fn copy_in(f: &Frames, virt_base: u64, va: u64, bytes: &[u8]) -> Result<(), ()> {
    let mut off = 0usize;
    while off < bytes.len() {
        let cur = va.checked_add(off as u64).ok_or(())?;
        let rel = cur.checked_sub(virt_base).ok_or(())?;
        let pfn = rel / PAGE;
        if pfn >= f.nr_pages {
            return Err(());
        }
        let in_page = (PAGE - (cur & (PAGE - 1))) as usize;
        let n = in_page.min(bytes.len() - off);
        // Under a writable reference: the frame is the domain's (it has not
        // run yet) and no page table.
        mm::frames::WriteRef::writable(f.mfn(pfn), f.dom)
            .map_err(|_| ())?
            .write(cur & (PAGE - 1), &bytes[off..off + n]);
        off += n;
    }
    Ok(())
}
