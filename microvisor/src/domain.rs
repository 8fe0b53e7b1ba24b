//! Domains: their table, their saved vCPU state, how each ended (and
//! whether that is what its manifest expects), whose teardown waits, and
//! the freeing of a gone domain's vCPU records. Owns no memory policy (see
//! `build` for construction, `lifecycle` for a domain's end and teardown);
//! calls no subsystem but the scheduler's placement; never trusts a guest
//! value it stores without the caller having validated it.

use crate::sched::runq::{Locked, SchedRec};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::io::console::{
    XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET, XENCONS_OUT_SIZE,
    out_slot,
};
use microvisor_core::manifest::Expect;
use microvisor_core::reservation::Account;
use spin::Mutex;

/// Most vCPUs of one domain (the vcpu_info slots of shared info, Xen's
/// XEN_LEGACY_MAX_VCPUS).
pub const MAX_VCPUS_PER_DOMAIN: usize = 32;
/// vCPU indices (`Hv::vcpus`) there can ever be: every domain's vCPUs
/// together, counted as they are made (an index is not reused once its
/// vCPU is gone). Far beyond what memory holds (at least 10 KiB each);
/// only the lock-free directory (`light`) is sized by it.
pub const MAX_VCPU_INDEX: usize = 1 << 20;

/// How a domain ended (`microvisor_core::domstate`, where its record's
/// cell for it is).
pub use microvisor_core::domstate::End;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// A vCPU's scheduling state.
pub enum RunState {
    Runnable,
    Blocked,
    /// Not running and not to be run: never brought up, VCPUOP_down, or
    /// its domain has ended.
    Down,
}

/// One virtual IDT entry (set_trap_table).
#[derive(Clone, Copy, Default, Debug)]
pub struct TrapEntry {
    /// Handler address; 0 = no handler.
    pub address: u64,
    /// Bits 0-1: DPL for software interrupts; bit 2: mask events on entry.
    pub flags: u8,
}

/// A registered callback: its entry point lies in guest space (checked by
/// [`Callback::new`], the only way to make one but [`Callback::NONE`]).
#[derive(Clone, Copy, Default, Debug)]
pub struct Callback {
    address: u64,
    mask_events: bool,
}

impl Callback {
    /// No callback.
    pub const NONE: Self = Self {
        address: 0,
        mask_events: false,
    };

    /// A callback at `address` (0: none), `EINVAL` for one outside guest
    /// space (`policy::callback_address`, as Xen).
    pub fn new(address: u64, mask_events: bool) -> Result<Self, guest_abi::errno::Errno> {
        Ok(Self {
            address: microvisor_core::pv::callback_address(address)?,
            mask_events,
        })
    }

    /// Its entry point (0: none registered).
    #[inline(always)]
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Whether entering it masks event delivery.
    #[inline(always)]
    pub fn mask_events(&self) -> bool {
        self.mask_events
    }
}

/// The paravirtual CPU state Xen keeps per vCPU beyond its registers.
/// Private to `domain`: read through its getters, written through methods
/// that keep each field's rule (a checked callback, the IOPL with the
/// bounce bits it decides, bases and selectors saved from the CPU, a GDT or
/// LDT frame with its segment-type reference).
pub struct PvState {
    /// The virtual IDT (set_trap_table, VCPUOP_initialise), on the heap
    /// from its first use ([`PvState::traps_mut`]); none: no vector has a
    /// handler. Read through [`PvState::trap`].
    traps: Option<alloc::boxed::Box<[TrapEntry; 256]>>,
    event: Callback,
    failsafe: Callback,
    syscall: Callback,
    /// Kernel stack for bounces from guest user mode (stack_switch).
    kernel_ss: u16,
    kernel_sp: u64,
    /// Virtual CR0.TS (fpu_taskswitch).
    virtual_ts: bool,
    /// Segment state while the vCPU is not running (while it runs, the CPU
    /// holds the selectors, the FS base and its current mode's GS base;
    /// [`Vcpu::save_segments`] copies them back).
    fs_base: u64,
    gs_base_kernel: u64,
    gs_base_user: u64,
    /// DS, ES, FS, GS selectors.
    selectors: [u16; 4],
    /// The vCPU runs guest user code (user page table, user GS base).
    user_mode: bool,
    /// Virtual I/O privilege level (PHYSDEVOP_set_iopl, or the iret
    /// hypercall's rflags with the architectural_iopl assist): whether the
    /// vCPU's cli, sti, in and out are emulated (`policy::iopl_allows`).
    iopl: u8,
    /// The domain's vm_assist bits (`policy::vm_assist`).
    vm_assist: u64,
    /// IOPL bits (13:12) bounce frames show in rflags: the virtual IOPL
    /// with the architectural_iopl assist, else 0 (Xen). Kept by
    /// `set_iopl`, so delivery reads one field.
    bounce_iopl: u64,
    /// A copy of the guest's own GDT entries (set_gdt, VCPUOP_initialise),
    /// loaded below 0xe000 while the vCPU runs: on the heap while it has a
    /// GDT of one entry or more (`gdt_entries` of them are meaningful).
    gdt: Option<alloc::boxed::Box<[u64; GUEST_GDT_ENTRIES]>>,
    gdt_entries: usize,
    /// Frame holding the guest's GDT (segment-typed while registered: the
    /// vCPU holds a type reference to it while this is not 0).
    gdt_frame: u64,
    /// The guest's LDT (MMUEXT_SET_LDT): linear address and entries.
    ldt_base: u64,
    ldt_ents: u32,
    /// Each LDT page the CPU has needed so far (0 = not yet): segment-typed
    /// (a type reference held for each) and shadow-mapped at
    /// `paging::LDT_VA` while this vCPU runs (Xen's lazily filled shadow
    /// LDT).
    ldt_frames: [u64; LDT_PAGES],
    /// Debug registers (set_debugreg, `mov` to and from %drN): DR0-DR3
    /// and DR7 are in the CPU while the vCPU runs with a breakpoint
    /// enabled; DR6 is virtual.
    dbg: microvisor_core::pv::debugreg::DebugRegs,
    /// Virtual CR4.DE (set by an emulated `mov` to %cr4): DR4/DR5 stop
    /// aliasing DR6/DR7 and I/O breakpoints become allowed.
    cr4_de: bool,
}

/// A trap table with no handler, on the heap (`ENOMEM` without room).
pub fn new_traps() -> Result<alloc::boxed::Box<[TrapEntry; 256]>, guest_abi::errno::Errno> {
    crate::mm::heap::try_box(|m| m.write(NO_TRAPS)).ok_or(guest_abi::errno::Errno::ENOMEM)
}

/// An all-zero GDT copy, on the heap (`ENOMEM` without room).
pub fn new_gdt() -> Result<alloc::boxed::Box<[u64; GUEST_GDT_ENTRIES]>, guest_abi::errno::Errno> {
    crate::mm::heap::try_box(|m| m.write([0; GUEST_GDT_ENTRIES]))
        .ok_or(guest_abi::errno::Errno::ENOMEM)
}

/// Pages of the largest LDT (8192 descriptors).
pub const LDT_PAGES: usize = crate::mm::paging::LDT_PAGES;

/// Guest GDT entries supported (one frame, as Linux and Mini-OS use).
pub const GUEST_GDT_ENTRIES: usize = 512;

/// Where a vCPU without a trap table finds its entries.
const NO_TRAPS: [TrapEntry; 256] = [TrapEntry {
    address: 0,
    flags: 0,
}; 256];

/// Drops a segment-type reference a vCPU held (0: none).
fn put_segment_frame(mfn: u64) {
    if mfn != 0 {
        crate::mm::frames::with(|ft, mem| ft.put_page_and_type(mem, mfn));
    }
}

impl PvState {
    // ---- trap table ----

    /// The virtual IDT entry of `vector` (no handler when the vCPU has no
    /// trap table).
    #[inline]
    pub fn trap(&self, vector: u8) -> TrapEntry {
        self.traps
            .as_deref()
            .map_or(TrapEntry::default(), |t| t[usize::from(vector)])
    }

    /// The trap table, allocated (every vector without a handler) if the
    /// vCPU has none yet: `ENOMEM` when the heap cannot give it.
    pub fn traps_mut(&mut self) -> Result<&mut [TrapEntry; 256], guest_abi::errno::Errno> {
        if self.traps.is_none() {
            self.traps = Some(new_traps()?);
        }
        self.traps
            .as_deref_mut()
            .ok_or(guest_abi::errno::Errno::ENOMEM)
    }

    /// Replaces the whole trap table (none: no vector has a handler).
    pub fn set_traps(&mut self, traps: Option<alloc::boxed::Box<[TrapEntry; 256]>>) {
        self.traps = traps;
    }

    // ---- callbacks, kernel stack, virtual TS ----

    /// The event upcall.
    #[inline(always)]
    pub fn event(&self) -> Callback {
        self.event
    }

    /// The 64-bit `syscall` entry.
    #[inline(always)]
    pub fn syscall(&self) -> Callback {
        self.syscall
    }

    /// Registers `cb` in `slot` (nothing for a slot never delivered to a
    /// 64-bit guest). The event upcall always masks events, as Xen.
    pub fn set_callback(&mut self, slot: microvisor_core::pv::CallbackSlot, cb: Callback) {
        use microvisor_core::pv::CallbackSlot;
        match slot {
            CallbackSlot::Event => {
                self.event = Callback {
                    mask_events: true,
                    ..cb
                }
            }
            CallbackSlot::Failsafe => self.failsafe = cb,
            CallbackSlot::Syscall => self.syscall = cb,
            CallbackSlot::Ignored => {}
        }
    }

    /// Unregisters `slot`'s callback.
    pub fn clear_callback(&mut self, slot: microvisor_core::pv::CallbackSlot) {
        use microvisor_core::pv::CallbackSlot;
        match slot {
            CallbackSlot::Event => self.event = Callback::NONE,
            CallbackSlot::Failsafe => self.failsafe = Callback::NONE,
            CallbackSlot::Syscall => self.syscall = Callback::NONE,
            CallbackSlot::Ignored => {}
        }
    }

    /// The kernel stack pointer for bounces from guest user mode.
    #[inline(always)]
    pub fn kernel_sp(&self) -> u64 {
        self.kernel_sp
    }

    /// Sets the kernel stack for bounces from guest user mode.
    pub fn set_kernel_stack(&mut self, ss: u16, sp: u64) {
        self.kernel_ss = ss;
        self.kernel_sp = sp;
    }

    /// Virtual CR0.TS.
    #[inline(always)]
    pub fn virtual_ts(&self) -> bool {
        self.virtual_ts
    }

    /// Sets virtual CR0.TS (the caller sets or clears the CPU's TS to
    /// match while the vCPU runs).
    #[inline]
    pub fn set_virtual_ts(&mut self, ts: bool) {
        self.virtual_ts = ts;
    }

    // ---- debug registers, virtual CR4.DE ----

    /// The debug registers.
    #[inline(always)]
    pub fn dbg(&self) -> &microvisor_core::pv::debugreg::DebugRegs {
        &self.dbg
    }

    /// Virtual CR4.DE.
    #[inline(always)]
    pub fn cr4_de(&self) -> bool {
        self.cr4_de
    }

    /// Sets virtual CR4.DE (from `policy::cr4_write_de`).
    #[inline]
    pub fn set_cr4_de(&mut self, de: bool) {
        self.cr4_de = de;
    }

    /// Reads debug register `reg` as the guest sees it (with its CR4.DE).
    pub fn read_debugreg(&self, reg: u32) -> Result<u64, microvisor_core::pv::debugreg::DrError> {
        self.dbg.read(reg, self.cr4_de)
    }

    /// Writes debug register `reg` with Xen's checks (with its CR4.DE);
    /// the caller loads the breakpoints while the vCPU runs.
    pub fn write_debugreg(
        &mut self,
        reg: u32,
        value: u64,
    ) -> Result<(), microvisor_core::pv::debugreg::DrError> {
        self.dbg.write(reg, value, self.cr4_de)
    }

    /// Joins what the CPU's DR6 reported to the virtual DR6.
    pub fn merge_dr6(&mut self, hw: u64) {
        self.dbg.merge_dr6(hw);
    }

    /// Records the I/O breakpoints an emulated access hit (DR6 B-bits).
    pub fn record_io_breakpoints(&mut self, bits: u64) {
        self.dbg.record(bits);
    }

    /// The I/O breakpoints an access of `width` bytes at `port` hits.
    #[inline]
    pub fn io_breakpoints_hit(&self, port: u16, width: u8) -> u64 {
        self.dbg.io_hits(port, width, self.cr4_de)
    }

    // ---- segments and mode ----

    /// The FS base (while the vCPU runs, as last saved from the CPU).
    #[inline(always)]
    pub fn fs_base(&self) -> u64 {
        self.fs_base
    }

    /// The kernel-mode GS base.
    #[inline(always)]
    pub fn gs_base_kernel(&self) -> u64 {
        self.gs_base_kernel
    }

    /// The user-mode GS base.
    #[inline(always)]
    pub fn gs_base_user(&self) -> u64 {
        self.gs_base_user
    }

    /// The GS base of the vCPU's current mode (kernel or user).
    #[inline(always)]
    pub fn gs_base(&self) -> u64 {
        if self.user_mode {
            self.gs_base_user
        } else {
            self.gs_base_kernel
        }
    }

    /// The DS, ES, FS, GS selectors.
    #[inline(always)]
    pub fn selectors(&self) -> [u16; 4] {
        self.selectors
    }

    /// Whether the vCPU runs guest user code.
    #[inline(always)]
    pub fn user_mode(&self) -> bool {
        self.user_mode
    }

    /// Records the live FS base and current-mode GS base.
    #[inline(always)]
    fn set_bases(&mut self, fs: u64, gs: u64) {
        self.fs_base = fs;
        if self.user_mode {
            self.gs_base_user = gs;
        } else {
            self.gs_base_kernel = gs;
        }
    }

    /// Copies the FS base and current-mode GS base this CPU holds into the
    /// state: by the CPU running the vCPU (the guest may have changed them
    /// by loading FS or GS).
    pub fn save_bases(&mut self) {
        self.set_bases(crate::arch::cpu::fs_base(), crate::arch::cpu::gs_base());
    }

    /// Sets FS (0), user GS (1) or kernel GS (2) base: `EINVAL` for
    /// another `which` or a non-canonical base (XSA-193). The caller saved
    /// the live bases first and loads them after.
    pub fn set_segment_base(
        &mut self,
        which: u64,
        base: u64,
    ) -> Result<(), guest_abi::errno::Errno> {
        if !microvisor_core::pv::canonical(base) {
            return Err(guest_abi::errno::Errno::EINVAL);
        }
        match which {
            0 => self.fs_base = base,
            1 => self.gs_base_user = base,
            2 => self.gs_base_kernel = base,
            _ => return Err(guest_abi::errno::Errno::EINVAL),
        }
        Ok(())
    }

    /// Records what the CPU holds after GS was loaded for user mode
    /// (`SEGBASE_GS_USER_SEL`): its data selectors and the user GS base
    /// the load gave.
    pub fn user_gs_loaded(&mut self, selectors: [u16; 4], gs_base_user: u64) {
        self.selectors = selectors;
        self.gs_base_user = gs_base_user;
    }

    /// Switches between guest kernel and guest user mode, the live bases
    /// saved from this CPU first; returns whether it is now in user mode.
    pub fn toggle_mode(&mut self) -> bool {
        self.save_bases();
        self.user_mode = !self.user_mode;
        self.user_mode
    }

    /// Sets the segment state and mode of a vCPU no CPU holds (a checked
    /// VCPUOP_initialise context).
    pub fn set_segments(
        &mut self,
        selectors: [u16; 4],
        fs_base: u64,
        gs_base_kernel: u64,
        gs_base_user: u64,
        user_mode: bool,
    ) {
        self.selectors = selectors;
        self.fs_base = fs_base;
        self.gs_base_kernel = gs_base_kernel;
        self.gs_base_user = gs_base_user;
        self.user_mode = user_mode;
    }

    // ---- virtual IOPL and assists ----

    /// The virtual IOPL.
    #[inline(always)]
    pub fn iopl(&self) -> u8 {
        self.iopl
    }

    /// The domain's vm_assist bits.
    #[inline(always)]
    pub fn vm_assist(&self) -> u64 {
        self.vm_assist
    }

    /// The IOPL bits bounce frames show in rflags.
    #[inline(always)]
    pub fn bounce_iopl(&self) -> u64 {
        self.bounce_iopl
    }

    /// Sets the virtual IOPL and assist bits together (they decide what
    /// bounce frames show).
    pub fn set_iopl(&mut self, iopl: u8, vm_assist: u64) {
        self.iopl = iopl & 3;
        self.vm_assist = vm_assist;
        let architectural = vm_assist & microvisor_core::pv::VMASST_ARCHITECTURAL_IOPL != 0;
        self.bounce_iopl = if architectural {
            u64::from(self.iopl) << 12
        } else {
            0
        };
    }

    /// Sets the virtual IOPL, the assist bits kept.
    pub fn set_virtual_iopl(&mut self, iopl: u8) {
        self.set_iopl(iopl, self.vm_assist);
    }

    // ---- GDT and LDT ----

    /// The guest GDT entries in use (`gdt_entries` of them).
    #[inline]
    pub fn gdt_in_use(&self) -> &[u64] {
        self.gdt
            .as_deref()
            .and_then(|g| g.get(..self.gdt_entries))
            .unwrap_or(&[])
    }

    /// The frame holding the guest's GDT (0: none).
    #[inline]
    pub fn gdt_frame(&self) -> u64 {
        self.gdt_frame
    }

    /// Registers a new GDT: `table`, `entries` of it meaningful, read from
    /// `frame` (0: none), whose segment-type reference the caller took and
    /// the vCPU now holds; the old GDT frame's reference is dropped.
    pub fn set_gdt(
        &mut self,
        table: Option<alloc::boxed::Box<[u64; GUEST_GDT_ENTRIES]>>,
        entries: usize,
        frame: u64,
    ) {
        put_segment_frame(core::mem::replace(&mut self.gdt_frame, frame));
        self.gdt = table;
        self.gdt_entries = entries;
    }

    /// A descriptor written into `mfn` at index `i`: the GDT copy follows
    /// when `mfn` is the vCPU's GDT frame and `i` one of its entries.
    /// Returns whether the copy changed (to be loaded again).
    pub fn gdt_written(&mut self, mfn: u64, i: usize, desc: u64) -> bool {
        if mfn != self.gdt_frame || i >= self.gdt_entries {
            return false;
        }
        if let Some(g) = self.gdt.as_deref_mut() {
            g[i] = desc;
        }
        true
    }

    /// The LDT's linear address.
    #[inline]
    pub fn ldt_base(&self) -> u64 {
        self.ldt_base
    }

    /// The LDT's entries (0: no LDT).
    #[inline(always)]
    pub fn ldt_ents(&self) -> u32 {
        self.ldt_ents
    }

    /// Each LDT page's frame (0: not shadow-mapped yet).
    #[inline]
    pub fn ldt_frames(&self) -> &[u64; LDT_PAGES] {
        &self.ldt_frames
    }

    /// Sets the LDT's address and entries; a different LDT drops the old
    /// one's pages ([`PvState::destroy_ldt`]). Returns whether it changed
    /// (to be loaded again while the vCPU runs).
    pub fn set_ldt(&mut self, base: u64, ents: u32) -> bool {
        if self.ldt_ents == ents && self.ldt_base == base {
            return false;
        }
        self.destroy_ldt();
        self.ldt_base = base;
        self.ldt_ents = ents;
        true
    }

    /// LDT page `page` is in `mfn`, whose segment-type reference the
    /// caller took and the vCPU now holds (the page had none).
    pub fn ldt_page_taken(&mut self, page: usize, mfn: u64) {
        self.ldt_frames[page] = mfn;
    }

    /// Drops every LDT page the vCPU holds (segment-type references and
    /// this CPU's shadow mappings of them); its LDT's address and size stay.
    pub fn destroy_ldt(&mut self) {
        for (i, f) in self.ldt_frames.iter_mut().enumerate() {
            if *f == 0 {
                continue;
            }
            if crate::mm::paging::ldt_page(i) == *f {
                crate::mm::paging::set_ldt_page(i, 0);
            }
            put_segment_frame(core::mem::take(f));
        }
    }

    /// The teardown (the vCPU's domain is gone): drops the LDT pages and
    /// the GDT frame's reference, frees the trap table and the GDT copy.
    pub fn release_tables(&mut self) {
        self.destroy_ldt();
        self.set_gdt(None, 0, 0);
        self.traps = None;
    }

    /// A vCPU's state before anything is registered.
    pub const fn new() -> Self {
        Self {
            traps: None,
            event: Callback::NONE,
            failsafe: Callback::NONE,
            syscall: Callback::NONE,
            kernel_ss: 0,
            kernel_sp: 0,
            virtual_ts: false,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            selectors: [0; 4],
            user_mode: false,
            iopl: 0,
            vm_assist: 0,
            bounce_iopl: 0,
            gdt: None,
            gdt_entries: 0,
            gdt_frame: 0,
            ldt_base: 0,
            ldt_ents: 0,
            ldt_frames: [0; LDT_PAGES],
            dbg: microvisor_core::pv::debugreg::DebugRegs::new(),
            cr4_de: false,
        }
    }
}

/// The data segment state a CPU holds: DS, ES, FS, GS selectors and the
/// live FS and GS bases.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SegState {
    pub selectors: [u16; 4],
    pub fs_base: u64,
    pub gs_base: u64,
}

impl SegState {
    /// Reads it from this CPU.
    pub fn read() -> Self {
        Self {
            selectors: crate::arch::cpu::data_selectors(),
            fs_base: crate::arch::cpu::fs_base(),
            gs_base: crate::arch::cpu::gs_base(),
        }
    }
}

/// Appends console bytes to a domain's line buffer, writing out each
/// complete line (and a full buffer) with the domain's prefix; `\r` is
/// dropped.
fn assemble(id: u16, name: &str, line: &mut heapless::Vec<u8, 256>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            crate::log::guest_line(id, name, line);
            line.clear();
        } else if b != b'\r' && line.push(b).is_err() {
            crate::log::guest_line(id, name, line);
            line.clear();
            let _ = line.push(b);
        }
    }
}

/// A domain's console output (Xen's `d->pbuf`, under `d->pbuf_lock`): its
/// two line buffers, what the manifest shows of them, and the prefix its
/// lines carry. On the heap from the domain's build until its teardown,
/// behind its id's console lock ([`console_lock`]), which `console_io`
/// reaches without the hypervisor lock (docs/smp.md, "Console buffers").
pub struct Console {
    id: u16,
    name: &'static str,
    /// Which of its console outputs the serial line shows (manifest
    /// `console`; docs/split-drivers.md, "Consoles").
    out: microvisor_core::manifest::ConsoleOutput,
    /// Pending `console_io` output, flushed per line.
    io_line: heapless::Vec<u8, 256>,
    /// Pending output drained from its console ring, flushed per line (its
    /// own buffer, so a partial `console_io` line never mixes with ring
    /// bytes).
    ring_line: heapless::Vec<u8, 256>,
}

impl Console {
    /// Appends `console_io` bytes, writing out each complete line (nothing
    /// if the manifest shows only the ring).
    pub fn write_io(&mut self, bytes: &[u8]) {
        if self.out.shows_io() {
            assemble(self.id, self.name, &mut self.io_line, bytes);
        }
    }

    /// Appends bytes drained from its console ring (nothing if the
    /// manifest hides the ring).
    fn write_ring(&mut self, bytes: &[u8]) {
        if self.out.shows_ring() {
            assemble(self.id, self.name, &mut self.ring_line, bytes);
        }
    }

    /// Writes out whatever partial lines are left.
    fn flush(&mut self) {
        for line in [&mut self.io_line, &mut self.ring_line] {
            if !line.is_empty() {
                crate::log::guest_line(self.id, self.name, line);
                line.clear();
            }
        }
    }
}

/// One domain id's console lock and, from the domain's build until its
/// teardown, its [`Console`]. The lock is never freed (a lock-free writer
/// may hold a reference to it); what it guards goes, under it.
pub type ConsoleSlot = Mutex<Option<alloc::boxed::Box<Console>>>;

/// Domain ids per chunk of console slots.
const CONSOLE_SLOT_CHUNK: usize = 256;

/// Every domain id's [`ConsoleSlot`], in chunks of `CONSOLE_SLOT_CHUNK`
/// ids (4 KiB) made when the first domain of their range is built and
/// kept for ever (16 bytes an id). Reading needs no lock (one load).
static CONSOLES: crate::mm::heap::ChunkDir<
    ConsoleSlot,
    CONSOLE_SLOT_CHUNK,
    { 65536 / CONSOLE_SLOT_CHUNK },
> = crate::mm::heap::ChunkDir::new();

/// Domain `dom`'s console, under its console lock (`None` inside: the
/// domain is gone, or was never built). Taken by `console_io`'s write
/// without the hypervisor lock, and under it by the ring's drain and the
/// domain's end and teardown; inside it only the serial line's lock is
/// taken. A CPU waiting for it serves TLB-flush requests meanwhile.
#[inline]
pub fn console_lock(
    dom: u16,
) -> Option<spin::MutexGuard<'static, Option<alloc::boxed::Box<Console>>>> {
    let s = CONSOLES.get(usize::from(dom))?;
    Some(match s.try_lock() {
        Some(g) => g,
        None => console_lock_contended(s),
    })
}

#[inline(never)]
fn console_lock_contended(
    s: &'static ConsoleSlot,
) -> spin::MutexGuard<'static, Option<alloc::boxed::Box<Console>>> {
    loop {
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
        if let Some(g) = s.try_lock() {
            return g;
        }
    }
}

/// The build: domain `dom`'s console (empty line buffers, the manifest's
/// output policy), allocated on the heap behind its id's console lock;
/// `false` when there is no memory for it (nothing is left allocated but
/// the id's slot).
pub fn console_built(
    dom: u16,
    name: &'static str,
    out: microvisor_core::manifest::ConsoleOutput,
) -> bool {
    let Some(s) = CONSOLES.made(usize::from(dom), |m| {
        m.write([const { Mutex::new(None) }; CONSOLE_SLOT_CHUNK])
    }) else {
        return false;
    };
    let Some(c) = crate::mm::heap::try_box(|m| {
        m.write(Console {
            id: dom,
            name,
            out,
            io_line: heapless::Vec::new(),
            ring_line: heapless::Vec::new(),
        })
    }) else {
        return false;
    };
    *s.lock() = Some(c);
    true
}

/// The teardown: domain `dom`'s console goes (taken out under its lock,
/// freed after). A line another of its vCPUs was still writing when the
/// domain ended (`Hv::flush_console` had already run) is written out first.
pub fn console_gone(dom: u16) {
    let old = {
        let Some(mut g) = console_lock(dom) else {
            return;
        };
        let mut old = g.take();
        if let Some(c) = old.as_mut() {
            c.flush();
        }
        old
    };
    // (Freed after the lock is let go: the heap has its own lock.)
    drop(old);
}

/// Whether domain `dom`'s console is still allocated.
pub fn console_held(dom: u16) -> bool {
    console_lock(dom).is_some_and(|g| g.is_some())
}

/// One domain: identity, memory, its shared pages and consoles, and the
/// indexes of its vCPUs in `Hv::vcpus`. Its fields are private to this
/// module: others read them through getters and change them only through
/// the methods that keep their rules (`end_with`, `drop_shared_pages`,
/// `charge_period`, `new_cap_period`, `push_vcpu`, ...); the build makes
/// one with [`Domain::new`].
pub struct Domain {
    id: u16,
    name: &'static str,
    privileged: bool,
    expect: Expect,
    /// How it ended (`None` while it lives): set once, by whichever CPU
    /// ends it first.
    end: microvisor_core::domstate::EndCell,
    /// Its memory accounting: the frames its reservation holds and its
    /// limit (Xen's `tot_pages`, `max_pages`), reached without the
    /// hypervisor lock through [`account`] by its own memory_op; the same
    /// record as `account(id)`, never freed.
    pages: &'static Account,
    /// Machine frame of the shared info page, and the hypervisor's handle on
    /// it (`SharedFrame::NONE` from its teardown).
    shared_info_mfn: u64,
    shared: crate::mm::FrameCell,
    /// Machine frame of the console ring page (start_info.console.mfn), and
    /// the hypervisor's handle on it (`SharedFrame::NONE` from its teardown).
    console_mfn: u64,
    console_page: crate::mm::FrameCell,
    /// Machine frame of the xenstore ring page (start_info.store_mfn).
    store_mfn: u64,
    /// The store and console event channels start_info names (allocated,
    /// unbound, for the service domain when there is one).
    store_evtchn: u32,
    console_evtchn: u32,
    /// The service domain (manifest `service = true`).
    service: bool,
    /// After death: frames still mapped by other domains (freed later by
    /// `Hv::collect_dead`).
    frames_waiting: AtomicU64,
    /// Scheduler cap (percent of one CPU, 0 = none), over all its vCPUs
    /// together (as Xen's credit scheduler); the manifest's weight lives on
    /// in `slice_vruntime` and `vr_mul`.
    cap: u8,
    /// One minimum slice in virtual run time
    /// (`microvisor_core::sched::slice_vruntime`), fixed with the weight at
    /// build.
    slice_vruntime: u64,
    /// Run time to virtual run time: `ns * vr_mul >> 16` is `ns * 256 /
    /// weight` (`microvisor_core::sched::vruntime_mul`, fixed with the
    /// weight at build).
    vr_mul: u64,
    /// Run time its vCPUs were charged in the current cap period.
    period_used: microvisor_core::domstate::PeriodUse,
    /// Its vCPUs: entry n is the index in `Hv::vcpus` of vCPU n (pushed at
    /// the build, before the record is published; emptied once their
    /// records are freed).
    vcpus: microvisor_core::domstate::VcpuList<MAX_VCPUS_PER_DOMAIN>,
    /// Dead, but another CPU still held one of its vCPUs: its memory goes
    /// once they let go (raised by `Hv::teardown_waits`, taken once by
    /// `Hv::teardown_may_go_on`; read through [`Domain::teardown_pending`]).
    teardown_pending: microvisor_core::domstate::Flag,
}

/// Where a vCPU's `vcpu_info` lives: its slot in shared info (vCPUs 0-31)
/// or wherever VCPUOP_register_vcpu_info moved it (64 bytes of a frame the
/// hypervisor writes, `mm::SharedSlot`).
pub type VcpuInfo = crate::mm::SharedSlot;

/// Byte offsets of vcpu_info's event fields (Xen's `struct vcpu_info`).
const INFO_PENDING: u64 =
    core::mem::offset_of!(guest_abi::shared_info::VcpuInfo, evtchn_upcall_pending) as u64;
const INFO_MASK: u64 =
    core::mem::offset_of!(guest_abi::shared_info::VcpuInfo, evtchn_upcall_mask) as u64;

/// A vcpu_info's event fields, for whoever holds its location (a `Vcpu`,
/// or a path that looked it up once).
impl VcpuInfo {
    /// evtchn_upcall_mask: the virtual interrupt flag (1 = off).
    #[inline(always)]
    pub fn upcall_mask(self) -> bool {
        self.u8_at(INFO_MASK).load(Ordering::Relaxed) != 0
    }

    #[inline(always)]
    pub fn set_upcall_mask(self, masked: bool) {
        self.u8_at(INFO_MASK).store(masked as u8, Ordering::Relaxed);
    }

    /// evtchn_upcall_pending.
    #[inline(always)]
    pub fn upcall_pending(self) -> bool {
        self.u8_at(INFO_PENDING).load(Ordering::Relaxed) != 0
    }
}

/// The slot of vCPU `vcpu` in a shared info page.
pub fn vcpu_info_in_shared(page: crate::mm::SharedFrame, vcpu: u32) -> VcpuInfo {
    page.slot(u64::from(vcpu % 32) * 64)
}

/// One virtual CPU: its registers' home (`frame`), its PV state, address
/// space, timers and scheduler accounting. On the heap (`VcpuTable`) from
/// its domain's build until the domain is gone (`Hv::reap_vcpus`). Its
/// identity, page tables, vcpu_info location, x87/SSE state, PV state,
/// runstate area and timers are private to this module (getters; set
/// through `install_frame`, `Hv::set_cr3`, `set_user_cr3`, `Hv::set_info`,
/// `save_fpu`, `set_fpu_image`, `Hv::cur_pv_mut`, `Hv::pv_mut`,
/// `save_segments`, `Hv::set_vm_assist`, `set_runstate_area`,
/// `runstate_write_now`, `refresh_time`, `write_time`, `Hv::set_timer`,
/// `Hv::start_periodic`, ...); its scheduling state is a record owned by
/// the run queues (`sched::runq::SchedRec`: [`Vcpu::sched`]), written only
/// under the run-queue lock of its processor.
pub struct Vcpu {
    /// Its saved registers (`arch::entry::VcpuFrame`). Private to this
    /// module, so the frame is touched only by the CPU running the vCPU
    /// (docs/smp.md, "Per vCPU"): the only ways to it are
    /// [`Vcpu::install_frame`], for a vCPU no CPU holds, and
    /// [`Vcpu::set_frame_current`], by the CPU that holds it, after which
    /// only that CPU's entry stubs and the `&mut TrapFrame` its entries
    /// hand over reach it. No other CPU is ever given its address.
    frame: crate::arch::entry::VcpuFrame,
    /// Its scheduling record: run state, virtual run time, runstate, poll,
    /// affinity and processor (`sched::runq`'s, written under its
    /// processor's run-queue lock).
    sched: SchedRec,
    /// Index of its domain in `Hv::domains` (its id: [`record`]).
    dom: usize,
    /// Its number within the domain (Xen's vcpu_id).
    vid: u32,
    /// It has a context (built, or VCPUOP_initialise): it may be brought up.
    initialised: bool,
    /// Machine address of the current L4 (guest kernel page tables).
    cr3: u64,
    /// Machine address of the guest user L4 (NEW_USER_BASEPTR), 0 = none.
    user_cr3: u64,
    /// Its vcpu_info.
    info: VcpuInfo,
    /// The frame VCPUOP_register_vcpu_info moved `info` to (holding a
    /// hypervisor write reference), 0 = still in shared info.
    info_mfn: u64,
    /// Trap table, callbacks, kernel stack and other PV vCPU state: read
    /// by anyone ([`Vcpu::pv`]); written by the CPU that holds the vCPU
    /// (its segments, descriptor tables, debug registers and mode are
    /// loaded in that CPU: [`Hv::cur_pv_mut`], [`Vcpu::save_segments`]) or
    /// while no CPU holds it ([`Hv::pv_mut`]), except the domain's assists,
    /// which no CPU loads ([`Hv::set_vm_assist`]).
    pv: PvState,
    /// x87/SSE registers while the vCPU is not running.
    fpu: crate::arch::cpu::FpuState,
    /// Guest virtual address of its runstate area
    /// (VCPUOP_register_runstate_memory_area), 0 = none.
    runstate_area: u64,
    /// The area's last update was due while the guest's kernel page tables
    /// were not loaded: it is written when the vCPU next enters guest kernel
    /// mode (Xen's `need_update_runstate_area`). Kept by
    /// [`Vcpu::runstate_write_now`].
    runstate_pending: bool,
    /// One-shot timer deadline (system time, ns), 0 = none. Set through
    /// [`Hv::set_timer`], which keeps `SCHED_VIEW.timers_due` at or below it.
    timer_deadline: u64,
    /// Periodic timer period and next expiry, 0 = none (set through
    /// [`Hv::start_periodic`], which keeps `SCHED_VIEW.timers_due` at or below it).
    periodic_ns: u64,
    periodic_next: u64,
    /// System time of the last write of its vcpu_time_info (kept with
    /// the write: [`Vcpu::refresh_time`], [`Vcpu::write_time`]).
    time_stamp: u64,
    /// Its [`VcpuLight`] (`light` of its index), set by `Hv::add_vcpu`:
    /// the code that keeps the mirror reaches it without the directory.
    light: Option<&'static VcpuLight>,
}

/// Xen's vcpu_runstate_info, kept by the scheduler.
#[derive(Clone, Copy, Default, Debug)]
pub struct Runstate {
    /// RUNSTATE_running 0, runnable 1, blocked 2, offline 3.
    pub state: u32,
    pub entry_time: u64,
    pub time: [u64; 4],
}

impl Runstate {
    /// Moves to `state` at system time `now`, charging the time spent in the
    /// previous state.
    pub fn enter(&mut self, state: u32, now: u64) {
        let spent = now.saturating_sub(self.entry_time);
        // States are 0-3 (RUNSTATE_running .. offline).
        self.time[(self.state & 3) as usize] += spent;
        self.state = state;
        self.entry_time = now;
    }

    /// As Xen's `vcpu_runstate_info` (48 bytes): state, entry time, the
    /// time spent in each state.
    pub fn to_bytes(self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[..4].copy_from_slice(&self.state.to_le_bytes());
        b[8..16].copy_from_slice(&self.entry_time.to_le_bytes());
        for (i, t) in self.time.iter().enumerate() {
            b[16 + i * 8..24 + i * 8].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    /// The runstate as Xen's `vcpu_runstate_get` gives it at `now`: the
    /// time in the current state counted up to now.
    pub fn at(&self, now: u64) -> Runstate {
        let mut rs = *self;
        if let Some(t) = rs.time.get_mut(rs.state as usize) {
            *t += now.saturating_sub(rs.entry_time);
        }
        rs
    }
}

impl Domain {
    /// Domain `id` as its build made it from its manifest entry `spec`:
    /// alive, its memory accounting `pages`, its shared info and console
    /// pages (each a machine frame and the hypervisor's handle on it), the
    /// xenstore frame and the ports its start_info `si` names, no vCPUs
    /// yet (`push_vcpu`).
    pub fn new(
        id: u16,
        spec: &microvisor_core::manifest::DomainSpec<'static>,
        pages: &'static Account,
        shared: (u64, crate::mm::SharedFrame),
        console: (u64, crate::mm::SharedFrame),
        si: &guest_abi::start_info::StartInfo,
    ) -> Domain {
        Domain {
            id,
            name: spec.name,
            privileged: spec.privileged,
            expect: spec.expect,
            end: microvisor_core::domstate::EndCell::new(),
            pages,
            shared_info_mfn: shared.0,
            shared: crate::mm::FrameCell::new(shared.1),
            console_mfn: console.0,
            console_page: crate::mm::FrameCell::new(console.1),
            store_mfn: si.store_mfn,
            store_evtchn: si.store_evtchn,
            console_evtchn: si.console.evtchn,
            service: spec.service,
            frames_waiting: AtomicU64::new(0),
            cap: spec.cap,
            slice_vruntime: microvisor_core::sched::slice_vruntime(spec.weight),
            vr_mul: microvisor_core::sched::vruntime_mul(spec.weight),
            period_used: microvisor_core::domstate::PeriodUse::new(),
            vcpus: microvisor_core::domstate::VcpuList::new(),
            teardown_pending: microvisor_core::domstate::Flag::new(),
        }
    }

    /// Its domain id (also its index in the domain table).
    #[inline(always)]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Its manifest name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Privileged (manifest `privileged`: Xen's control domain rights).
    #[inline(always)]
    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// The service domain (manifest `service = true`).
    #[inline(always)]
    pub fn is_service(&self) -> bool {
        self.service
    }

    /// How its manifest expects it to end.
    pub fn expect(&self) -> Expect {
        self.expect
    }

    /// How it ended (`None` while it lives).
    pub fn end(&self) -> Option<End> {
        self.end.get()
    }

    #[inline(always)]
    pub fn is_live(&self) -> bool {
        self.end.is_live()
    }

    /// Records how it ended, once: `false` (and nothing changes) when it
    /// had already ended, also when another CPU ended it first.
    pub fn end_with(&self, end: End) -> bool {
        self.end.end_with(end)
    }

    /// Its memory accounting (the record [`account`] gives for its id).
    #[inline(always)]
    pub fn pages(&self) -> &'static Account {
        self.pages
    }

    /// Machine frame of its shared info page.
    pub fn shared_info_mfn(&self) -> u64 {
        self.shared_info_mfn
    }

    /// The hypervisor's handle on its shared info page (`SharedFrame::NONE`
    /// once it is torn down).
    #[inline(always)]
    pub fn shared(&self) -> crate::mm::SharedFrame {
        self.shared.load()
    }

    /// Machine frame of its console ring page (start_info.console.mfn).
    pub fn console_mfn(&self) -> u64 {
        self.console_mfn
    }

    /// Machine frame of its xenstore ring page (start_info.store_mfn).
    pub fn store_mfn(&self) -> u64 {
        self.store_mfn
    }

    /// The xenstore event channel its start_info names.
    pub fn store_evtchn(&self) -> u32 {
        self.store_evtchn
    }

    /// The console event channel its start_info names (0: none, no
    /// service domain serves its console).
    pub fn console_evtchn(&self) -> u32 {
        self.console_evtchn
    }

    /// Its teardown: the hypervisor writes neither its shared info nor its
    /// console page any more, so its handles on them go. Returns their
    /// machine frames (shared info, console), whose hypervisor write
    /// references the caller drops.
    pub fn drop_shared_pages(&self) -> (u64, u64) {
        self.shared.store(crate::mm::SharedFrame::NONE);
        self.console_page.store(crate::mm::SharedFrame::NONE);
        (self.shared_info_mfn, self.console_mfn)
    }

    /// After death: `n` of its frames are still mapped by other domains
    /// (`Hv::collect_dead` frees them later).
    pub fn set_frames_waiting(&self, n: u64) {
        self.frames_waiting.store(n, Ordering::Relaxed);
    }

    /// After death: how many of its frames other domains still map.
    pub fn frames_waiting(&self) -> u64 {
        self.frames_waiting.load(Ordering::Relaxed)
    }

    /// It has a scheduler cap (manifest `cap`).
    pub fn is_capped(&self) -> bool {
        self.cap != 0
    }

    /// One minimum slice in virtual run time.
    #[inline(always)]
    pub fn slice_vruntime(&self) -> u64 {
        self.slice_vruntime
    }

    /// Run time to virtual run time: `ns * vr_mul >> 16` is `ns * 256 /
    /// weight`.
    #[inline(always)]
    pub fn vr_mul(&self) -> u64 {
        self.vr_mul
    }

    /// Charges `ns` of its vCPUs' run time to the current cap period.
    #[inline(always)]
    pub fn charge_period(&self, ns: u64) {
        self.period_used.charge(ns);
    }

    /// Whether it used up its cap for the current period.
    #[inline(always)]
    pub fn over_cap(&self) -> bool {
        self.period_used.over_cap(u16::from(self.cap))
    }

    /// A new cap period starts: what it ran beyond its cap in the old one
    /// carries over (`microvisor_core::sched::carry_over`).
    pub fn new_cap_period(&self) {
        self.period_used.new_period(u16::from(self.cap));
    }

    /// Its vCPUs: entry n is the vCPU index (`Hv::vcpu`) of its vCPU n
    /// (empty once their records are freed).
    #[inline(always)]
    pub fn vcpus(&self) -> &[usize] {
        self.vcpus.as_slice()
    }

    /// Adds vCPU index `v` as its next vCPU (number `vcpus().len()`), at
    /// its build (before [`Hv::add_domain`] publishes the record); `false`
    /// (nothing added) when it has `MAX_VCPUS_PER_DOMAIN` already.
    pub fn push_vcpu(&mut self, v: usize) -> bool {
        self.vcpus.push(v)
    }

    /// Whether it is live and its console ring holds output to drain
    /// (`Hv::drain_console`).
    #[inline(always)]
    pub fn console_output_waiting(&self) -> bool {
        // Both indexes in one load (`out_cons`, then `out_prod`: guest-abi's
        // `XenconsInterface`): nothing to drain is the common case.
        let both = self
            .console_page
            .load()
            .u64_at(CONSOLE_OUT_CONS)
            .load(Ordering::Relaxed);
        both as u32 != (both >> 32) as u32 && self.is_live()
    }

    /// Dead, but its teardown waits until no CPU holds any of its vCPUs
    /// (`Hv::teardown_waits`): until then it still holds its memory.
    pub fn teardown_pending(&self) -> bool {
        self.teardown_pending.get()
    }
}

impl Vcpu {
    /// A vCPU that exists but is down and has no context yet (vCPUs 1 and
    /// up of a new domain, as Xen creates them), its frame zeroed; `None`
    /// when there is no memory for its frame.
    pub fn offline(dom: usize, vid: u32, shared: crate::mm::SharedFrame) -> Option<Vcpu> {
        Some(Vcpu {
            frame: crate::arch::entry::VcpuFrame::new()?,
            sched: SchedRec::new(&UNPLACED),
            dom,
            vid,
            initialised: false,
            cr3: 0,
            user_cr3: 0,
            info: vcpu_info_in_shared(shared, vid),
            info_mfn: 0,
            pv: PvState::new(),
            fpu: crate::arch::cpu::FpuState::initial(),
            runstate_area: 0,
            runstate_pending: false,
            timer_deadline: 0,
            periodic_ns: 0,
            periodic_next: 0,
            time_stamp: 0,
            light: None,
        })
    }

    /// The CPU it runs on, or last ran on: the CPU whose run queue it is
    /// on while runnable (`VcpuLight::processor`, changed only by
    /// `sched::runq`; also readable without any lock through
    /// [`light`]`(i)`).
    #[inline(always)]
    pub fn processor(&self) -> u32 {
        self.sched.processor()
    }

    /// Its scheduling record (run state, virtual run time, runstate, poll,
    /// affinity), for reading.
    #[inline(always)]
    pub fn sched(&self) -> &SchedRec {
        &self.sched
    }

    /// Its scheduling record, for writing: each of its setters takes the
    /// run-queue lock of its processor (`runq::Locked`).
    #[inline(always)]
    pub fn sched_mut(&mut self) -> &mut SchedRec {
        &mut self.sched
    }

    /// Its run state.
    #[inline(always)]
    pub fn state(&self) -> RunState {
        self.sched.state()
    }

    /// Installs the vCPU's first registers (the builder's, or a
    /// VCPUOP_initialise context). Called only while no CPU holds the vCPU
    /// and none was entered from it: a vCPU that was never initialised has
    /// never run, and the caller holds the hypervisor lock, under which
    /// alone a vCPU is taken by a CPU (`Hv::hold`).
    /// It then has a context ([`Vcpu::initialised`]).
    #[inline]
    pub fn install_frame(&mut self, frame: &crate::arch::entry::TrapFrame) {
        self.frame.install(frame);
        self.initialised = true;
    }

    /// Makes the vCPU's frame the one this CPU's entries save into and its
    /// exit path restores from. Called only by the CPU that holds the vCPU
    /// (the scheduler's switch, once `Hv::hold` gave it this CPU), so its
    /// frame is written by that CPU alone until it lets go.
    #[inline(always)]
    pub fn set_frame_current(&self) {
        crate::arch::entry::set_current(&self.frame);
    }

    /// Index of its domain in the domain table (`Hv::dom`).
    #[inline(always)]
    pub fn dom(&self) -> usize {
        self.dom
    }

    /// Its number within the domain (Xen's vcpu_id).
    #[inline(always)]
    pub fn vid(&self) -> u32 {
        self.vid
    }

    /// It has a context (built, or VCPUOP_initialise: set by
    /// [`Vcpu::install_frame`]): it may be brought up.
    pub fn initialised(&self) -> bool {
        self.initialised
    }

    /// Machine address of its kernel L4 (set by `Hv::set_cr3`, which keeps
    /// its `VcpuLight` copy with it).
    #[inline(always)]
    pub fn cr3(&self) -> u64 {
        self.cr3
    }

    /// Machine address of its user L4 (NEW_USER_BASEPTR), 0 = none.
    #[inline(always)]
    pub fn user_cr3(&self) -> u64 {
        self.user_cr3
    }

    /// Sets its user L4 (NEW_USER_BASEPTR, VCPUOP_initialise), 0 = none.
    pub fn set_user_cr3(&mut self, cr3: u64) {
        self.user_cr3 = cr3;
    }

    /// Its vcpu_info (set by `Hv::set_info`, which keeps its `VcpuLight`
    /// copy with it).
    #[inline(always)]
    pub fn info(&self) -> VcpuInfo {
        self.info
    }

    /// The frame VCPUOP_register_vcpu_info moved its vcpu_info to (the
    /// hypervisor holds a write reference on it), 0 = still in shared info.
    pub fn info_mfn(&self) -> u64 {
        self.info_mfn
    }

    /// Saves this CPU's x87/SSE registers as the vCPU's (it leaves the
    /// CPU).
    #[inline(always)]
    pub fn save_fpu(&mut self) {
        crate::arch::cpu::fpu_save(&mut self.fpu);
    }

    /// Loads the vCPU's x87/SSE registers into this CPU (it runs next).
    #[inline(always)]
    pub fn restore_fpu(&self) {
        crate::arch::cpu::fpu_restore(&self.fpu);
    }

    /// Sets its x87/SSE registers from a guest's FXSAVE image
    /// (VCPUOP_initialise), made safe to load first
    /// (`microvisor_core::pv::context::sanitize_fxsave`): the image
    /// `restore_fpu` loads always is.
    pub fn set_fpu_image(&mut self, image: [u8; 512]) {
        self.fpu.0 = image;
        microvisor_core::pv::context::sanitize_fxsave(&mut self.fpu.0);
    }

    /// Its PV state (trap table, callbacks, segments, descriptor tables,
    /// debug registers, mode), to read. Written only through
    /// [`Hv::cur_pv_mut`] and [`Vcpu::save_segments`] (by the CPU that
    /// holds it), [`Hv::pv_mut`] (while no CPU holds it) and
    /// [`Hv::set_vm_assist`].
    #[inline(always)]
    pub fn pv(&self) -> &PvState {
        &self.pv
    }

    /// Saves the data selectors and the FS and current-mode GS bases this
    /// CPU holds as the vCPU's (Xen's save_segments): by the CPU that holds
    /// it, as it leaves (they are what this CPU's registers hold, as
    /// [`Vcpu::save_fpu`]'s). Returns them, for `pv::load_segments`.
    pub fn save_segments(&mut self) -> SegState {
        let cpu = SegState::read();
        self.pv.selectors = cpu.selectors;
        self.pv.set_bases(cpu.fs_base, cpu.gs_base);
        cpu
    }

    /// Guest virtual address of its runstate area, 0 = none.
    #[inline(always)]
    pub fn runstate_area(&self) -> u64 {
        self.runstate_area
    }

    /// Registers its runstate area at `va` (0: none): an update that
    /// waited to be written to the old one is forgotten.
    pub fn set_runstate_area(&mut self, va: u64) {
        self.runstate_area = va;
        self.runstate_pending = false;
    }

    /// Where its runstate is to be written now, with `loaded` the page
    /// tables this CPU has loaded: its area, if it has one and its kernel
    /// page tables are the loaded ones while it is in guest kernel mode
    /// (the update is then no longer waiting); else `None`, and with an
    /// area the update waits until it next enters kernel mode
    /// ([`Vcpu::runstate_update_due`]).
    pub fn runstate_write_now(&mut self, loaded: u64) -> Option<u64> {
        if self.runstate_area == 0 {
            return None;
        }
        if self.pv.user_mode || loaded != self.cr3 {
            self.runstate_pending = true;
            return None;
        }
        self.runstate_pending = false;
        Some(self.runstate_area)
    }

    /// An update of its runstate area waited for guest kernel mode
    /// ([`Vcpu::runstate_write_now`]), and it is in kernel mode now.
    #[inline(always)]
    pub fn runstate_update_due(&self) -> bool {
        self.runstate_pending && !self.pv.user_mode
    }

    /// Rewrites its vcpu_time_info if the last write is `time::REFRESH_NS`
    /// or more before system time `now`.
    #[inline(always)]
    pub fn refresh_time(&mut self, now: u64) {
        if now.wrapping_sub(self.time_stamp) >= crate::time::REFRESH_NS {
            self.write_time(now);
        }
    }

    /// Writes its vcpu_time_info, at system time `now`.
    pub fn write_time(&mut self, now: u64) {
        crate::time::update_vcpu_time(self.info);
        self.time_stamp = now;
    }

    /// Its vcpu_time_info was written (by its domain's build) at about
    /// system time `now`.
    pub fn time_written(&mut self, now: u64) {
        self.time_stamp = now;
    }

    /// Its one-shot timer deadline (system time), 0 = none.
    pub fn timer_deadline(&self) -> u64 {
        self.timer_deadline
    }

    /// Whether its one-shot timer has expired at `now`: if so it is
    /// stopped (it fires once).
    #[inline]
    pub fn take_expired_timer(&mut self, now: u64) -> bool {
        if self.timer_deadline != 0 && self.timer_deadline <= now {
            self.timer_deadline = 0;
            return true;
        }
        false
    }

    /// Whether its periodic timer fires at `now`: if so its next expiry is
    /// the first period boundary after `now` (periods missed fire once).
    /// As on Xen, it runs only while the vCPU is not blocked (a blocked
    /// vCPU is woken by its one-shot timer).
    #[inline]
    pub fn periodic_fired(&mut self, now: u64) -> bool {
        if self.periodic_ns == 0
            || self.periodic_next > now
            || self.sched.state() == RunState::Blocked
        {
            return false;
        }
        let behind = (now - self.periodic_next) / self.periodic_ns + 1;
        self.periodic_next += behind * self.periodic_ns;
        true
    }

    /// The system times its timers fire next (each 0: none): its one-shot
    /// timer's, and its periodic timer's while it is not blocked.
    #[inline]
    pub fn timer_expiries(&self) -> [u64; 2] {
        let periodic = if self.periodic_ns != 0 && self.sched.state() != RunState::Blocked {
            self.periodic_next
        } else {
            0
        };
        [self.timer_deadline, periodic]
    }

    /// The next expiry of its periodic timer (0: it has none) as it is
    /// woken: paused while it was blocked ([`Vcpu::timer_expiries`]), the
    /// timer runs again, so the caller hands this to [`Hv::timer_set`] (the
    /// timer scan must not skip it).
    #[inline(always)]
    pub fn periodic_resumed(&self) -> u64 {
        if self.periodic_ns != 0 {
            self.periodic_next
        } else {
            0
        }
    }

    /// Stops its periodic timer.
    pub fn stop_periodic(&mut self) {
        self.periodic_ns = 0;
    }

    /// Stops both its timers (its domain ended).
    pub fn stop_timers(&mut self) {
        self.timer_deadline = 0;
        self.periodic_ns = 0;
    }

    /// The L4 the CPU must use for the vCPU's current mode.
    pub fn active_cr3(&self) -> u64 {
        if self.pv.user_mode {
            self.user_cr3
        } else {
            self.cr3
        }
    }

    /// evtchn_upcall_mask: the virtual interrupt flag (1 = off).
    pub fn upcall_mask(&self) -> bool {
        self.info.upcall_mask()
    }

    pub fn set_upcall_mask(&self, masked: bool) {
        self.info.set_upcall_mask(masked);
    }

    /// evtchn_upcall_pending.
    pub fn upcall_pending(&self) -> bool {
        self.info.upcall_pending()
    }

    /// Records a page-fault address in its vcpu_info's arch.cr2.
    pub fn set_cr2(&self, cr2: u64) {
        self.info.u64_at(16).store(cr2, Ordering::Relaxed);
    }
}

/// All domains, all vCPUs, and which vCPU runs. The tables and the
/// running vCPU are private to this module: other modules reach one
/// domain or vCPU at a time through methods (`dom`, `vcpu`, `cur` and
/// their `_mut` forms), never the tables themselves.
pub struct Hv {
    /// Every domain built, by id (dead ones too: their records give the
    /// verdict): each record on the heap, never freed, and published in
    /// the lock-free domain list ([`record`]); no fixed number.
    domains: alloc::vec::Vec<&'static Domain>,
    /// Every vCPU, by index, on the heap; no fixed number.
    vcpus: VcpuTable,
    /// Index in `vcpus` of the running vCPU (`current_index`).
    current: usize,
    /// The scheduler's sets every CPU reads (runnable, held, the cap
    /// period), under this lock; the run queues and affinity sets are
    /// under their own per-CPU locks (`sched::runq`). Kept by `set_state`,
    /// `assign`, `hold`, `let_go`, `add_vcpu` and the reaper.
    pub sched: crate::sched::runq::Sched,
    /// Some dead domain waits for its teardown (`teardown_waits`). Kept
    /// by this module alone; `lifecycle::finish_waiting` asks
    /// `take_teardowns_waiting` and `teardown_may_go_on`.
    teardowns_waiting: bool,
    /// Some torn-down domain's vCPU records wait until no CPU holds them
    /// or was entered from them (`reap_vcpus`). Kept by this module alone.
    reap_waiting: bool,
}

/// Every vCPU record, by index (`Hv::vcpus`): each on the heap from its
/// domain's build (`Hv::add_vcpu`) until that domain is gone and no CPU
/// holds it (`Hv::reap_vcpus`); an index is never reused. Indexing a freed
/// record is a hypervisor bug (a panic, as an index past the table was).
pub struct VcpuTable(alloc::vec::Vec<Option<alloc::boxed::Box<Vcpu>>>);

impl VcpuTable {
    pub const fn new() -> VcpuTable {
        VcpuTable(alloc::vec::Vec::new())
    }

    /// Indices made so far (freed ones included).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Records held now.
    pub fn held(&self) -> usize {
        self.0.iter().filter(|v| v.is_some()).count()
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&Vcpu> {
        self.0.get(i)?.as_deref()
    }

    #[inline(always)]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Vcpu> {
        self.0.get_mut(i)?.as_deref_mut()
    }

    /// Every record held, with its index.
    pub fn live(&self) -> impl Iterator<Item = (usize, &Vcpu)> {
        (self.0.iter().enumerate()).filter_map(|(i, v)| Some((i, v.as_deref()?)))
    }

    /// Adds a record at the next index; `None` when there is no memory.
    fn push(&mut self, v: alloc::boxed::Box<Vcpu>) -> Option<usize> {
        self.0.try_reserve(1).ok()?;
        self.0.push(Some(v));
        Some(self.0.len() - 1)
    }

    /// Frees record `i` (its frame with it).
    fn free(&mut self, i: usize) {
        if let Some(v) = self.0.get_mut(i) {
            *v = None;
        }
    }
}

impl Default for VcpuTable {
    fn default() -> Self {
        Self::new()
    }
}

impl core::ops::Index<usize> for VcpuTable {
    type Output = Vcpu;
    #[inline(always)]
    fn index(&self, i: usize) -> &Vcpu {
        match self.get(i) {
            Some(v) => v,
            None => panic!("vCPU index {i}: no such record"),
        }
    }
}

impl core::ops::IndexMut<usize> for VcpuTable {
    #[inline(always)]
    fn index_mut(&mut self, i: usize) -> &mut Vcpu {
        match self.get_mut(i) {
            Some(v) => v,
            None => panic!("vCPU index {i}: no such record"),
        }
    }
}

/// What the lock-free paths read of a vCPU (defined with the other
/// lock-free cells in `mm`, so that each CPU's block can point at its
/// held vCPU's).
pub use crate::mm::VcpuLight;

/// vCPU indices per chunk of [`VcpuLight`]s.
const LIGHT_CHUNK: usize = 256;

// A chunk of `LIGHT_CHUNK` vCPU indices' [`VcpuLight`]s (6 KiB) as it is
// made (a template copied into the heap, never used in place).
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_LIGHT: [VcpuLight; LIGHT_CHUNK] = [const {
    VcpuLight {
        state: core::sync::atomic::AtomicU8::new(light_state(RunState::Down)),
        dom: core::sync::atomic::AtomicU16::new(0),
        cr3: core::sync::atomic::AtomicU64::new(0),
        info: crate::mm::SlotCell::new(),
        capped: core::sync::atomic::AtomicBool::new(false),
        processor: core::sync::atomic::AtomicU32::new(0),
    }
}; LIGHT_CHUNK];

/// The processor cell of a `Vcpu` record not yet added (`Hv::add_vcpu`
/// points it at its `VcpuLight`'s): nothing reads it.
static UNPLACED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Every vCPU index's [`VcpuLight`], in chunks of `LIGHT_CHUNK` made when
/// the first vCPU of their range is (`Hv::add_vcpu`, under the hypervisor
/// lock) and kept for ever: a lock-free reader may hold a reference into
/// one at any time. Reading needs no lock (one load).
static LIGHT_DIR: crate::mm::heap::ChunkDir<
    VcpuLight,
    LIGHT_CHUNK,
    { MAX_VCPU_INDEX / LIGHT_CHUNK },
> = crate::mm::heap::ChunkDir::new();

/// vCPU index `v`'s [`VcpuLight`], if its chunk was ever made.
#[inline(always)]
pub fn light(v: usize) -> Option<&'static VcpuLight> {
    LIGHT_DIR.get(v)
}

/// The [`VcpuLight`] of the vCPU this CPU holds (`PerCpu::vcpu`), if any:
/// what [`light`] gives for that index, from this CPU's block
/// (`PerCpu::light`) without the directory walk.
#[inline(always)]
pub fn held_light() -> Option<&'static VcpuLight> {
    crate::arch::percpu::held_light()
}

/// This CPU now holds vCPU index `v` (or none: [`NO_VCPU`]): publishes the
/// index and its [`VcpuLight`] in this CPU's block.
#[inline(never)]
fn hold_here(hv: &Hv, v: usize) {
    crate::arch::percpu::set_vcpu(v as u64, hv.vcpus.get(v).and_then(|d| d.light));
}

/// vCPU index `v`'s [`VcpuLight`], its chunk made if needed (`None`: no
/// memory for it, or `v` past `MAX_VCPU_INDEX`).
fn light_made(v: usize) -> Option<&'static VcpuLight> {
    LIGHT_DIR.made(v, |m| m.write(EMPTY_LIGHT))
}

/// One domain id's place in the domain list: its record once built (null
/// before). Set once, by [`Hv::add_domain`]; the record is never freed.
type DomainSlot = crate::mm::heap::StaticRef<Domain>;

/// Domain ids per chunk of the domain list (4 KiB).
const DOMAIN_LIST_CHUNK: usize = 512;

/// The domain list (Xen's `domain_list` and `domain_hash`, read-mostly):
/// every domain id's record, in chunks of `DOMAIN_LIST_CHUNK` ids made when
/// the first domain of their range is built and kept for ever (8 bytes an
/// id). Reading needs no lock; a record is published once built, never
/// moved or freed (a dead domain's record gives the verdict), so a
/// reference a lock-free reader holds stays valid for the whole run.
static DOMAIN_LIST: crate::mm::heap::ChunkDir<
    DomainSlot,
    DOMAIN_LIST_CHUNK,
    { 65536 / DOMAIN_LIST_CHUNK },
> = crate::mm::heap::ChunkDir::new();

/// Domain `id`'s record, if it was ever built (dead ones too), without the
/// hypervisor lock: its identity and policy as the build set them, and
/// what changes after through its own atomics (`is_live`, `end`, ...).
#[inline]
pub fn record(id: u16) -> Option<&'static Domain> {
    DOMAIN_LIST.get(usize::from(id))?.get()
}

/// Domain ids per chunk of [`Account`]s.
const ACCOUNT_CHUNK: usize = 256;

// A chunk of `ACCOUNT_CHUNK` domain ids' accounts (4 KiB) as it is made
// (a template copied into the heap, never used in place).
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_ACCOUNTS: [Account; ACCOUNT_CHUNK] = [const { Account::new() }; ACCOUNT_CHUNK];

/// Every domain id's memory accounting ([`Account`]: Xen's `tot_pages` and
/// `max_pages`, which Xen keeps under `d->page_alloc_lock`), in chunks of
/// `ACCOUNT_CHUNK` ids made when the first domain of their range is built
/// and kept for ever, so memory_op on the caller's own domain reaches it
/// without the hypervisor lock (docs/smp.md, "Memory accounting").
static ACCOUNTS: crate::mm::heap::ChunkDir<Account, ACCOUNT_CHUNK, { 65536 / ACCOUNT_CHUNK }> =
    crate::mm::heap::ChunkDir::new();

/// Domain `dom`'s memory accounting, if its chunk was ever made (every
/// domain built has one).
#[inline]
pub fn account(dom: u16) -> Option<&'static Account> {
    ACCOUNTS.get(usize::from(dom))
}

/// Domain `dom`'s memory accounting, its chunk made if needed (`None`: no
/// memory for it). The domain's build sets it.
pub fn account_made(dom: u16) -> Option<&'static Account> {
    ACCOUNTS.made(usize::from(dom), |m| m.write(EMPTY_ACCOUNTS))
}

// The console page's output ring and its indexes (`struct xencons_interface`,
// Xen's public io/console.h): byte offsets in the page.
const CONSOLE_OUT: u64 = XENCONS_OUT_OFFSET as u64;
const CONSOLE_OUT_CONS: u64 = XENCONS_OUT_CONS_OFFSET as u64;
const CONSOLE_OUT_PROD: u64 = XENCONS_OUT_PROD_OFFSET as u64;

/// Domain ids per chunk of dirty-CPU masks.
const DIRTY_CHUNK: usize = 512;

/// Every domain id's dirty-CPU mask (Xen's `d->dirty_cpumask`): bit c is
/// set once CPU c may hold translations through the domain's page tables.
/// A CPU sets its bit before it loads one of them ([`tlb_join`]) and never
/// clears it: whether it still holds any is its entry in `TLB_HELD`, which
/// readers of the mask look at for each CPU the mask names
/// ([`dirty_cpus`]). So the mask is a superset, and a switch to a domain
/// whose mask already has this CPU costs no locked update. Flushes a
/// domain's page-table changes need reach these CPUs only
/// (`mmu::apply_flush`, `UVMF_ALL`). In chunks made when the first domain
/// of their range is built, kept for ever (lock-free readers).
static DIRTY: crate::mm::heap::ChunkDir<AtomicU64, DIRTY_CHUNK, { 65536 / DIRTY_CHUNK }> =
    crate::mm::heap::ChunkDir::new();

// A chunk of empty masks as it is made (a template copied into the heap).
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_DIRTY: [AtomicU64; DIRTY_CHUNK] = [const { AtomicU64::new(0) }; DIRTY_CHUNK];

/// For each CPU, the domains whose translations it may hold: in the low
/// half the one whose page tables it has loaded since its last full flush
/// (id + 1; 0: none), in the high half, during a switch, the one before
/// (id + 1), until the switch's full flush has removed its translations.
/// Only the CPU itself changes its entry.
static TLB_HELD: [AtomicU64; crate::arch::percpu::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::arch::percpu::MAX_CPUS];

/// Whether a `TLB_HELD` entry names domain id + 1 `me` in either half.
#[inline(always)]
fn tlb_held_names(held: u64, me: u64) -> bool {
    held & 0xffff_ffff == me || held >> 32 == me
}

/// Makes domain `dom`'s dirty mask (its chunk), for its build; `None`: no
/// memory for it.
pub fn dirty_made(dom: u16) -> Option<&'static AtomicU64> {
    DIRTY.made(usize::from(dom), |m| m.write(EMPTY_DIRTY))
}

/// The CPUs that may hold translations through domain `dom`'s page tables
/// (bit per CPU number): those of its mask whose `TLB_HELD` entry names it
/// (every CPU's entry when its mask was never made); the mask as it is
/// while only one CPU runs guests (no other CPU to flush: the callers
/// flush their own). Sequentially
/// consistent with [`tlb_join`]'s updates: a caller that removed an entry
/// (and fenced) before this either sees a CPU here or that CPU loads the
/// tables after the removal (it names `dom` in its entry, and sets its
/// mask bit if not set, before it loads them), and a CPU left out has
/// finished the full flush that followed its last use of them.
#[inline]
pub fn dirty_cpus(dom: u16) -> u64 {
    let mask = DIRTY
        .get(usize::from(dom))
        .map_or(u64::MAX, |m| m.load(Ordering::SeqCst));
    if !crate::arch::smp::active() {
        return mask;
    }
    let me = u64::from(dom) + 1;
    let mut out = 0;
    let mut left = mask;
    while left != 0 {
        let c = left.trailing_zeros() as usize;
        left &= left - 1;
        if TLB_HELD
            .get(c)
            .is_some_and(|h| tlb_held_names(h.load(Ordering::SeqCst), me))
        {
            out |= 1 << c;
        }
    }
    out
}

/// This CPU (`cpu`) is about to load one of domain `dom`'s page tables: it
/// names `dom` in its `TLB_HELD` entry, keeping the domain before in the
/// other half (it still holds that one's translations until the flush:
/// [`tlb_leave`]), then sets its bit in `dom`'s mask if it is not set yet,
/// both before the load (sequentially consistent, ordered before it).
#[inline(always)]
pub fn tlb_join(dom: u16, cpu: usize) {
    let Some(held) = TLB_HELD.get(cpu) else {
        return;
    };
    let me = u64::from(dom) + 1;
    let was = held.load(Ordering::Relaxed) & 0xffff_ffff;
    if was == me {
        return;
    }
    held.store(me | was << 32, Ordering::SeqCst);
    if let Some(m) = DIRTY.get(usize::from(dom)) {
        let bit = 1 << (cpu % 64);
        if m.load(Ordering::SeqCst) & bit == 0 {
            m.fetch_or(bit, Ordering::SeqCst);
        }
    }
}

/// After the full flush of a switch on this CPU (`cpu`): it no longer
/// holds the domain before's translations ([`tlb_join`]'s other half). Its
/// bit stays in that domain's mask.
#[inline(always)]
pub fn tlb_leave(cpu: usize) {
    if let Some(held) = TLB_HELD.get(cpu) {
        held.store(
            held.load(Ordering::Relaxed) & 0xffff_ffff,
            Ordering::Release,
        );
    }
}

/// After a full flush of this CPU on the hypervisor's own page tables (a
/// release to idle): it holds no domain's translations.
pub fn tlb_leave_all(cpu: usize) {
    if let Some(held) = TLB_HELD.get(cpu) {
        held.store(0, Ordering::Release);
    }
}

/// The domain whose tables CPU `cpu` loaded last and may still hold
/// translations of (the low half of its `TLB_HELD` entry, an atomic only
/// it writes: read by the audit, `lifecycle::audit`).
pub fn tlb_joined(cpu: usize) -> Option<u16> {
    let d = TLB_HELD.get(cpu)?.load(Ordering::Relaxed) & 0xffff_ffff;
    u16::try_from(d.checked_sub(1)?).ok()
}

/// What the lock-free yield (`sched::yield_alone`) reads of the scheduler:
/// kept under the hypervisor lock where what it sums up changes.
pub struct SchedView {
    /// For each CPU c: how many vCPUs wait to run that c may take
    /// (runnable, held by no CPU, allowed on c). Kept by `Hv::set_state`,
    /// `hold` and `let_go` (`microvisor_core::sched::waiting::changed`).
    pub waiting: [core::sync::atomic::AtomicU32; crate::arch::percpu::MAX_CPUS],
    /// No guest timer or poll deadline is due before this system time
    /// (a lower bound: `sched::fire_timers` scans only from then on): the
    /// one copy, one atomic word. Lowered by `Hv::timer_set` (an atomic
    /// minimum, needing no lock), recounted by a scan through
    /// `Hv::recount_timers_due` (under the hypervisor lock, one scan at a
    /// time), which never raises it past a deadline set while it counted
    /// (`microvisor_core::sched::due`); read through `Hv::timers_due` and
    /// by the lock-free yield.
    pub timers_due: microvisor_core::sched::due::TimersDue,
}

/// Whether some vCPU was ever added with its domain capped
/// (`Hv::add_vcpu`; never cleared, a cap never changes): while none was,
/// no domain is over its cap and the scheduler skips the test
/// (`sched::vcpu_capped`). Set under the hypervisor lock, before any pick
/// that could see the vCPU.
pub static ANY_CAPPED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub static SCHED_VIEW: SchedView = SchedView {
    waiting: [const { core::sync::atomic::AtomicU32::new(0) }; crate::arch::percpu::MAX_CPUS],
    timers_due: microvisor_core::sched::due::TimersDue::new(),
};

/// A `RunState` as [`VcpuLight::state`] holds it.
pub const fn light_state(s: RunState) -> u8 {
    match s {
        RunState::Runnable => 0,
        RunState::Blocked => 1,
        RunState::Down => 2,
    }
}

/// Id of the domain whose vCPU runs (`u32::MAX` before the first), kept
/// outside the lock so a crash report can name it.
pub static CURRENT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(u32::MAX);

/// All hypervisor state; taken through [`lock`].
static HV: Mutex<Hv> = Mutex::new(Hv {
    domains: alloc::vec::Vec::new(),
    vcpus: VcpuTable::new(),
    current: 0,
    sched: crate::sched::runq::Sched::new(),
    teardowns_waiting: false,
    reap_waiting: false,
});

/// The hypervisor lock, taken by every entry that needs hypervisor state:
/// `Hv::current` is then the vCPU this CPU holds (put back when the guard
/// goes). While it waits, the CPU serves other CPUs' TLB-flush requests
/// (the holder may be waiting for exactly that).
#[inline(always)]
pub fn lock() -> HvGuard {
    let g = match HV.try_lock() {
        Some(g) => g,
        None => lock_contended(),
    };
    let mut g = HvGuard(g);
    // (NO_VCPU is the same all-ones value in both types.)
    g.current = crate::arch::percpu::vcpu() as usize;
    g
}

#[inline(never)]
fn lock_contended() -> spin::MutexGuard<'static, Hv> {
    loop {
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
        if let Some(g) = HV.try_lock() {
            return g;
        }
    }
}

const _: () = assert!(NO_VCPU as u64 == crate::arch::percpu::NO_VCPU);

/// `Hv::current` while this CPU holds no vCPU (it idles).
pub const NO_VCPU: usize = usize::MAX;

/// The held hypervisor lock (`lock`).
pub struct HvGuard(spin::MutexGuard<'static, Hv>);

impl core::ops::Deref for HvGuard {
    type Target = Hv;
    #[inline(always)]
    fn deref(&self) -> &Hv {
        &self.0
    }
}

impl core::ops::DerefMut for HvGuard {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Hv {
        &mut self.0
    }
}

impl Drop for HvGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // (Only a switch changes it: the rest of the time one compare.)
        let v = self.0.current;
        if v as u64 != crate::arch::percpu::vcpu() {
            hold_here(&self.0, v);
        }
    }
}

/// The name Xen gives each shutdown reason.
pub fn reason_name(r: u32) -> &'static str {
    match r {
        0 => "poweroff",
        1 => "reboot",
        2 => "suspend",
        3 => "crash",
        4 => "watchdog",
        5 => "soft_reset",
        _ => "unknown",
    }
}

/// Whether an ending matches what the manifest expected.
pub fn as_expected(end: End, expect: Expect) -> bool {
    match (end, expect) {
        (End::Killed, Expect::Killed) => true,
        (End::Shutdown(r), e) => e.shutdown_code() == Some(r as u64),
        _ => false,
    }
}

impl Hv {
    /// The running vCPU: the one this CPU holds, or entered the hypervisor
    /// from (`lock` sets it from `arch::percpu::vcpu`). Panics when the CPU
    /// holds none (`NO_VCPU`): only paths entered from a guest ask.
    #[inline(always)]
    pub fn cur(&self) -> &Vcpu {
        &self.vcpus[self.current]
    }

    /// The running vCPU, to change.
    #[inline(always)]
    pub fn cur_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpus[self.current]
    }

    /// Index (in the vCPU table) of the running vCPU, `NO_VCPU` while this
    /// CPU holds none.
    #[inline(always)]
    pub fn current_index(&self) -> usize {
        self.current
    }

    /// Makes vCPU `i` (or `NO_VCPU`) the one this CPU runs: the scheduler's
    /// switch and release alone call this. The lock's guard hands it to
    /// `arch::percpu` when it goes.
    #[inline(always)]
    pub fn set_current_index(&mut self, i: usize) {
        self.current = i;
    }

    /// vCPU `i`; a vCPU index whose record is gone (or never was) is a
    /// hypervisor bug: a panic.
    #[inline(always)]
    pub fn vcpu(&self, i: usize) -> &Vcpu {
        &self.vcpus[i]
    }

    /// vCPU `i`, to change (as [`Hv::vcpu`]).
    #[inline(always)]
    pub fn vcpu_mut(&mut self, i: usize) -> &mut Vcpu {
        &mut self.vcpus[i]
    }

    /// vCPU `i`, if its record is held.
    #[inline(always)]
    pub fn get_vcpu(&self, i: usize) -> Option<&Vcpu> {
        self.vcpus.get(i)
    }

    /// vCPU `i`, to change, if its record is held.
    #[inline(always)]
    pub fn get_vcpu_mut(&mut self, i: usize) -> Option<&mut Vcpu> {
        self.vcpus.get_mut(i)
    }

    /// vCPU `i` to change, with its domain to read (one lookup of each).
    #[inline(always)]
    pub fn vcpu_and_dom(&mut self, i: usize) -> (&mut Vcpu, &'static Domain) {
        let v = &mut self.vcpus[i];
        let d = self.domains[v.dom];
        (v, d)
    }

    /// vCPU indices made so far (those of freed records included): every
    /// vCPU index is below it.
    #[inline(always)]
    pub fn vcpu_indices(&self) -> usize {
        self.vcpus.len()
    }

    /// vCPU records held now.
    pub fn vcpus_held(&self) -> usize {
        self.vcpus.held()
    }

    /// Every vCPU record held, with its index.
    pub fn vcpus(&self) -> impl Iterator<Item = (usize, &Vcpu)> {
        self.vcpus.live()
    }

    /// The domain of vCPU `i`.
    #[inline(always)]
    pub fn dom_of(&self, i: usize) -> &'static Domain {
        self.domains[self.vcpus[i].dom]
    }

    /// Domain index `idx` (its id); past the table is a hypervisor bug (a
    /// panic): a guest's number is looked up with [`Hv::get_dom`] (or,
    /// without the hypervisor lock, [`record`]). What changes in it after
    /// the build changes through its own methods, from any CPU
    /// (`microvisor_core::domstate`).
    #[inline(always)]
    pub fn dom(&self, idx: usize) -> &'static Domain {
        self.domains[idx]
    }

    /// Domain index `idx`, if there is one.
    #[inline(always)]
    pub fn get_dom(&self, idx: usize) -> Option<&'static Domain> {
        self.domains.get(idx).copied()
    }

    /// Every domain built, by index (dead ones too).
    #[inline(always)]
    pub fn domains(&self) -> impl Iterator<Item = &'static Domain> + Clone + '_ {
        self.domains.iter().copied()
    }

    /// Domains built so far (dead ones included): every domain index is
    /// below it.
    #[inline(always)]
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The index of the live domain with id `id`, if there is one.
    pub fn live_domain(&self, id: u16) -> Option<usize> {
        self.domains.iter().position(|d| d.id == id && d.is_live())
    }

    /// Makes room for `n` more domains at once (boot: the manifest's);
    /// `false` without the memory.
    pub fn reserve_domains(&mut self, n: usize) -> bool {
        self.domains.try_reserve_exact(n).is_ok()
    }

    /// Adds a built domain at the next index (its id, which the builder
    /// chose as `domain_count()`): its record goes on the heap for good and
    /// is published in the domain list ([`record`]); `false` when there is
    /// no memory for it (the boot then fails).
    pub fn add_domain(&mut self, d: Domain) -> bool {
        if self.domains.try_reserve(1).is_err() {
            return false;
        }
        let Some(slot) = DOMAIN_LIST.made(usize::from(d.id), |m| {
            m.write([const { DomainSlot::new() }; DOMAIN_LIST_CHUNK])
        }) else {
            return false;
        };
        let Some(b) = crate::mm::heap::try_box(|m| m.write(d)) else {
            return false;
        };
        let d: &'static Domain = alloc::boxed::Box::leak(b);
        slot.set(d);
        self.domains.push(d);
        true
    }

    /// Whether this CPU runs a vCPU that has gone down (VCPUOP_down, or its
    /// domain ended here or on another CPU): it must leave the CPU.
    pub fn current_is_down(&self) -> bool {
        self.vcpus
            .get(self.current)
            .is_some_and(|v| v.state() == RunState::Down)
    }

    /// The running vCPU's domain.
    #[inline(always)]
    pub fn cur_dom(&self) -> &'static Domain {
        self.domains[self.vcpus[self.current].dom]
    }

    /// Index in `domains` of the running vCPU's domain.
    #[inline(always)]
    pub fn cur_dom_idx(&self) -> usize {
        self.vcpus[self.current].dom
    }

    /// The index in `vcpus` of vCPU `vid` of domain index `dom`.
    pub fn vcpu_of(&self, dom: usize, vid: u32) -> Option<usize> {
        self.domains.get(dom)?.vcpus().get(vid as usize).copied()
    }

    /// Changes a vCPU's run state (the only place that does, so the
    /// scheduler's set of runnable vCPUs stays true), under its queue's
    /// run-queue lock (`runq::Sched::set_state`).
    #[inline]
    pub fn set_state(&mut self, i: usize, state: RunState) {
        self.set_state_then(i, state, |_, _| {});
    }

    /// [`Hv::set_state`], `on_join` writing the record under the lock of
    /// the queue it joins when it becomes runnable, before it joins (the
    /// wake's virtual run time); returns that lock, held, so the caller
    /// may go on writing the record (`None`: no vCPU `i`).
    #[inline(always)]
    pub fn set_state_then(
        &mut self,
        i: usize,
        state: RunState,
        on_join: impl FnOnce(&mut SchedRec, &Locked),
    ) -> Option<Locked> {
        let d = self.vcpus.get_mut(i)?;
        if let Some(l) = d.light {
            l.state.store(light_state(state), Ordering::SeqCst);
        }
        Some(self.sched.set_state(i, &mut d.sched, state, on_join))
    }

    /// Runs `f` on vCPU `i`'s scheduling record under its processor's
    /// run-queue lock (taken here); `None` when there is no vCPU `i`.
    #[inline]
    pub fn with_sched<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut SchedRec, &Locked) -> R,
    ) -> Option<R> {
        let v = self.vcpus.get_mut(i)?;
        let q = Locked::of(v.sched.processor_cell());
        Some(f(&mut v.sched, &q))
    }

    /// vCPU `i` waits to run: runnable and held by no CPU.
    #[inline(always)]
    fn waiting(&self, i: usize) -> bool {
        self.sched.is_waiting(i)
    }

    /// Keeps `SCHED_VIEW.waiting` true after vCPU `i`'s held state
    /// changed: it waited before (`was`) and waits now (`now`).
    #[inline(always)]
    fn waiting_became(&self, i: usize, was: bool, now: bool) {
        if was == now {
            return;
        }
        let Some(v) = self.vcpus.get(i) else { return };
        microvisor_core::sched::waiting::changed(&SCHED_VIEW.waiting, v.sched.cpus(), was, now);
    }

    /// The audit's check of `SCHED_VIEW.waiting`: every CPU's count equals
    /// a recount from the run queues and the held vCPUs (they change only
    /// under the hypervisor lock, which the caller holds). A difference is
    /// a hypervisor bug: it fails the run.
    pub fn audit_sched_view(&self, when: &str) {
        let vcpus = (0..self.vcpus.len())
            .filter_map(|i| Some((self.waiting(i), self.vcpus.get(i)?.sched.cpus())));
        if let Some(m) = microvisor_core::sched::waiting::mismatch(&SCHED_VIEW.waiting, vcpus) {
            crate::error!(
                "audit after {when} failed: cpu {} counts {} waiting vCPUs, a recount {}",
                m.cpu,
                m.counted,
                m.recounted
            );
            crate::arch::cpu::qemu_exit(false);
        }
        let processor = |i: usize| Some(self.vcpus.get(i)?.processor() as usize);
        if let Some((v, c)) = self.sched.queues_mismatch(processor) {
            crate::error!(
                "audit after {when} failed: vCPU {v} (processor {:?}) in cpu {c}'s run queue, or runnable and not in it",
                processor(v)
            );
            crate::arch::cpu::qemu_exit(false);
        }
        // Each record's run state agrees with the runnable set, a running
        // runstate with the held set, and each queue's floor bounds its
        // vCPUs' virtual run times (the wake's floor: `runq::floor`).
        let rec = |i: usize| Some(self.vcpus.get(i)?.sched());
        if let Some((v, c, what)) = self.sched.records_mismatch(self.vcpus.len(), rec) {
            crate::error!("audit after {when} failed: vCPU {v} (cpu {c}): {what}");
            crate::arch::cpu::qemu_exit(false);
        }
        // A CPU holds only a vCPU whose processor it is, so the held ones'
        // processors differ, and this CPU's is its own: what `kick_for`,
        // which reads both without the lock, relies on to reach the CPU
        // that holds a vCPU.
        let cpu = crate::arch::percpu::cpu_id();
        let mine = self.current;
        let held_here =
            mine == NO_VCPU || (self.sched.is_held(mine) && processor(mine) == Some(cpu));
        if let Some((v, c)) = (!held_here)
            .then_some((mine, cpu))
            .or_else(|| self.sched.held_processors_clash(processor))
        {
            crate::error!(
                "audit after {when} failed: vCPU {v} (processor {:?}, held {}) held by cpu {c}, or two held vCPUs on one processor",
                processor(v),
                self.sched.is_held(v)
            );
            crate::arch::cpu::qemu_exit(false);
        }
    }

    /// Moves vCPU `i`, which no CPU holds, to CPU `cpu`'s run queue (a
    /// migration: the CPU that takes it from another's queue calls this).
    #[inline]
    pub fn assign(&mut self, i: usize, cpu: usize) {
        if let Some(d) = self.vcpus.get(i) {
            self.sched.assign(i, &d.sched, cpu);
        }
    }

    /// Adds vCPU `v` to `Hv::vcpus`, allowed on the CPUs of `cpus` (bit c:
    /// CPU c), its domain capped or not: its record on the heap, room for
    /// its index in every set of vCPUs, its `VcpuLight`. Returns its
    /// index, or `None` when there is no memory for any of these (nothing
    /// is added then; sets that grew stay grown).
    pub fn add_vcpu(&mut self, mut v: Vcpu, cpus: u64, capped: bool) -> Option<usize> {
        let i = self.vcpus.len();
        if !self.sched.make_room(i, cpus) {
            return None;
        }
        let l = light_made(i)?;
        // (Not yet in the table: nothing else reaches its record.)
        v.sched.place(&l.processor, cpus);
        v.light = Some(l);
        // (A domain's index is its id.)
        let (dom, cr3, info, state) = (v.dom as u16, v.cr3, v.info, v.state());
        let b = crate::mm::heap::try_box(|m| m.write(v))?;
        if self.vcpus.push(b)? != i {
            return None;
        }
        l.dom.store(dom, Ordering::Relaxed);
        l.cr3.store(cr3, Ordering::Relaxed);
        l.info.store(info);
        l.capped.store(capped, Ordering::Relaxed);
        if capped {
            ANY_CAPPED.store(true, Ordering::Relaxed);
        }
        l.state.store(light_state(state), Ordering::SeqCst);
        Some(i)
    }

    /// This CPU now holds vCPU `i` (runs it): no other CPU may pick it.
    #[inline(always)]
    pub fn hold(&mut self, i: usize) {
        // (Held: it no longer waits.)
        if self.sched.hold(i) {
            self.waiting_became(i, true, false);
        }
    }

    /// A switch's scheduler bookkeeping in one: this CPU, whose run-queue
    /// lock `q` the switch holds, lets go of vCPU `cur` (`NO_VCPU`: it
    /// held none), allowed on the CPUs of `cur_cpus` (the caller has its
    /// record in hand), and takes `next`, moved to its queue first
    /// (`assign`, `let_go`, `hold`); returns `next`'s record and the lock
    /// (still held, or taken again if the move needed another CPU's lock
    /// first: `runq::Sched::assign_here`). The waiting counts change once
    /// for both: not at all when `cur` starts waiting as `next` stops, on
    /// the same CPUs.
    #[inline(always)]
    pub fn hand_over(
        &mut self,
        q: Locked,
        cur: usize,
        cur_cpus: u64,
        next: usize,
    ) -> (&mut Vcpu, Locked) {
        let v = &mut self.vcpus[next];
        let q = self.sched.assign_here(q, next, &v.sched);
        let (up, down) = self.sched.swap_held(cur, next);
        let up_cpus = up.then_some(cur_cpus);
        let counts = &SCHED_VIEW.waiting;
        let cpus = v.sched.cpus();
        match up_cpus {
            Some(c) if down && c == cpus => {}
            Some(c) => {
                microvisor_core::sched::waiting::changed(counts, c, false, true);
                microvisor_core::sched::waiting::changed(counts, cpus, down, false);
            }
            None => microvisor_core::sched::waiting::changed(counts, cpus, down, false),
        }
        (v, q)
    }

    /// The running vCPU (`i`) and its domain, to charge for its run time.
    #[inline(always)]
    pub fn get_vcpu_and_dom_mut(&mut self, i: usize) -> Option<(&mut Vcpu, &'static Domain)> {
        let v = self.vcpus.get_mut(i)?;
        let d = *self.domains.get(v.dom)?;
        Some((v, d))
    }

    /// This CPU lets go of vCPU `i`: any CPU may pick it again.
    #[inline(always)]
    pub fn let_go(&mut self, i: usize) {
        // (Held by no CPU now: it waits if it is runnable.)
        if self.sched.let_go(i) {
            self.waiting_became(i, false, true);
        }
    }

    /// No guest timer or poll deadline is due before this system time.
    #[inline]
    pub fn timers_due(&self) -> u64 {
        SCHED_VIEW.timers_due.get()
    }

    /// Sets vCPU `i`'s one-shot timer to system time `deadline` (0: stops
    /// it), so that the timer scan does not skip it (`timer_set`).
    pub fn set_timer(&mut self, i: usize, deadline: u64) {
        self.vcpus[i].timer_deadline = deadline;
        self.timer_set(deadline);
    }

    /// Starts vCPU `i`'s periodic timer, every `period` ns from system time
    /// `now` (its first expiry at `now + period`), so that the timer scan
    /// does not skip it (`timer_set`).
    pub fn start_periodic(&mut self, i: usize, period: u64, now: u64) {
        let v = &mut self.vcpus[i];
        v.periodic_ns = period;
        v.periodic_next = now + period;
        self.timer_set(now + period);
    }

    /// The PV state of the running vCPU (`cur`), to change: this CPU holds
    /// it, or entered the hypervisor from it.
    #[inline(always)]
    pub fn cur_pv_mut(&mut self) -> &mut PvState {
        &mut self.vcpus[self.current].pv
    }

    /// vCPU `i`'s PV state, to change: `i` must be the running vCPU or one
    /// no CPU holds (another CPU's would have the state it loaded and the
    /// state written here disagree). Anything else is a hypervisor bug: a
    /// panic.
    pub fn pv_mut(&mut self, i: usize) -> &mut PvState {
        assert!(
            i == self.current || !self.sched.is_held(i),
            "vCPU {i}'s PV state written while another CPU holds it"
        );
        &mut self.vcpus[i].pv
    }

    /// Sets domain index `dom`'s vm_assist bits, which each of its vCPUs
    /// keeps (with the bounce frames' IOPL bits they decide:
    /// [`PvState::set_iopl`]). Any CPU may: no CPU loads them, each use
    /// reads them under the hypervisor lock.
    pub fn set_vm_assist(&mut self, dom: usize, bits: u64) {
        for &v in self.domains[dom].vcpus() {
            let pv = &mut self.vcpus[v].pv;
            pv.set_iopl(pv.iopl(), bits);
        }
    }

    /// Dead domain `idx`'s teardown waits until no CPU holds any of its
    /// vCPUs (`lifecycle::end`): `teardown_may_go_on` says when it may
    /// go on.
    pub fn teardown_waits(&mut self, idx: usize) {
        self.domains[idx].teardown_pending.raise();
        self.teardowns_waiting = true;
    }

    /// Whether some teardown waited (`teardown_waits`) when last asked;
    /// clears it: the caller asks `teardown_may_go_on` of every dead
    /// domain, which sets it again for one that still waits.
    #[inline(always)]
    pub fn take_teardowns_waiting(&mut self) -> bool {
        core::mem::take(&mut self.teardowns_waiting)
    }

    /// Whether domain `idx`'s teardown waited and may go on now (no CPU
    /// holds any of its vCPUs): if so, it no longer waits and the caller
    /// tears the domain down (`lifecycle::finish_waiting`).
    pub fn teardown_may_go_on(&mut self, idx: usize) -> bool {
        let Some(&d) = self.domains.get(idx) else {
            return false;
        };
        if !d.teardown_pending() {
            return false;
        }
        if d.vcpus().iter().any(|&v| self.sched.is_held(v)) {
            self.teardowns_waiting = true;
            return false;
        }
        // (Taken once: a teardown that waited goes on on one CPU only.)
        d.teardown_pending.take()
    }

    /// Frees the vCPU records that waited to be (`reap_vcpus`), if any do.
    #[inline(always)]
    pub fn reap_if_waiting(&mut self) {
        if self.reap_waiting {
            self.reap_vcpus();
        }
    }

    /// A timer scan's recount of the earliest guest timer deadline
    /// (`timers_due`): `earliest` reads every deadline (`None`: none). A
    /// deadline set meanwhile is never lost to it
    /// (`microvisor_core::sched::due::TimersDue::recount`); `&mut self`
    /// keeps scans one at a time.
    pub fn recount_timers_due(&mut self, earliest: impl FnOnce(&Hv) -> Option<u64>) {
        let hv = &*self;
        SCHED_VIEW
            .timers_due
            .recount(|| earliest(hv).unwrap_or(u64::MAX));
    }

    /// Sets vCPU `i`'s kernel page tables (`Vcpu::cr3`).
    pub fn set_cr3(&mut self, i: usize, cr3: u64) {
        let d = &mut self.vcpus[i];
        d.cr3 = cr3;
        if let Some(l) = d.light {
            l.cr3.store(cr3, Ordering::Relaxed);
        }
    }

    /// Sets where vCPU `i`'s vcpu_info lives (`Vcpu::info`): in frame `mfn`
    /// (`Vcpu::info_mfn`, whose hypervisor write reference the caller took;
    /// 0: in shared info, or nowhere).
    pub fn set_info(&mut self, i: usize, info: VcpuInfo, mfn: u64) {
        let d = &mut self.vcpus[i];
        d.info = info;
        d.info_mfn = mfn;
        if let Some(l) = d.light {
            l.info.store(info);
        }
    }

    /// Whether vCPU `i`'s record may be in use: some CPU holds it, or this
    /// CPU, or another, entered the hypervisor from it (its frame is the
    /// one that entry was handed, `arch::percpu::vcpu`).
    fn vcpu_in_use(&self, i: usize) -> bool {
        self.sched.is_held(i) || i == self.current || crate::arch::smp::entered_from(i as u64)
    }

    /// Frees the vCPU records (frames with them) of domains that are gone
    /// (dead and torn down) once none of their vCPUs is in use
    /// (`vcpu_in_use`); those still in use wait for a later call
    /// (`reap_waiting`: at the next switch or release of a vCPU on any
    /// CPU). Their `VcpuLight`s stay (the directory keeps its chunks),
    /// reset to a vCPU that is down and has no `vcpu_info`; their indices
    /// are not reused.
    pub fn reap_vcpus(&mut self) {
        self.reap_waiting = false;
        for idx in 0..self.domains.len() {
            let d = self.domains[idx];
            if d.is_live() || d.teardown_pending() || d.vcpus().is_empty() {
                continue;
            }
            if d.vcpus().iter().any(|&v| self.vcpu_in_use(v)) {
                self.reap_waiting = true;
                continue;
            }
            let vcpus = d.vcpus();
            // (Forgotten once: the records are freed by one CPU only.)
            if !d.vcpus.forget() {
                continue;
            }
            for &v in vcpus {
                self.sched.forget(v);
                self.vcpus.free(v);
                if let Some(l) = light(v) {
                    l.state.store(light_state(RunState::Down), Ordering::SeqCst);
                    l.info.store(VcpuInfo::NONE);
                    l.cr3.store(0, Ordering::Relaxed);
                    l.capped.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether gone domain `idx`'s vCPU records are still held though none
    /// is in use (`reap_vcpus` missed them); for `footprint::check_freed`.
    /// (Looks at every record held, not at the domain's list, which
    /// `reap_vcpus` empties.)
    pub fn vcpus_left(&self, idx: usize) -> bool {
        let mine = || self.vcpus.live().filter(move |(_, v)| v.dom == idx);
        !mine().any(|(i, _)| self.vcpu_in_use(i)) && mine().next().is_some()
    }

    /// Blocks the running vCPU `i` unless `pending` (its events, read after
    /// the state is Blocked) says it has something to do: then it stays
    /// runnable and this returns false. In this order, a sender that sets
    /// an event pending without the lock either is seen here or sees
    /// Blocked (`VcpuLight::state`) and takes the lock to wake it.
    pub fn block_unless(&mut self, i: usize, pending: impl FnOnce(&Hv) -> bool) -> bool {
        self.set_state(i, RunState::Blocked);
        core::sync::atomic::fence(Ordering::SeqCst);
        if pending(self) {
            self.set_state(i, RunState::Runnable);
            return false;
        }
        true
    }

    /// Records that a guest timer or poll deadline was set for system time
    /// `t` (0: none), so the scheduler's timer scan does not skip it (only
    /// a lower deadline, or a scan counting, costs the atomic minimum).
    #[inline(always)]
    pub fn timer_set(&mut self, t: u64) {
        SCHED_VIEW.timers_due.lower(t);
    }

    /// Drains a live domain's console ring (the `out` half of its console
    /// page) to the serial line, unless a console back-end serves it. A
    /// guest writes its ring only while it runs, so the scheduler drains the
    /// vCPU it takes off the CPU (also at a tick): a guest that writes and
    /// waits for the ring to empty never hangs, and no switch scans every
    /// domain.
    ///
    /// Each ring has one reader: a domain whose start_info names a console
    /// port (`console_evtchn` != 0: a service domain exists to serve it) is
    /// the service domain's from boot, as xenconsoled's, even before it binds
    /// the port; its bytes wait in the ring until then. Only if the service
    /// domain has ended does the hypervisor take such rings over, so that
    /// their writers never hang.
    pub fn drain_console(&mut self, i: usize) {
        let Some(d) = self.domains.get(i) else { return };
        if !d.console_output_waiting() {
            return;
        }
        if d.console_evtchn != 0 && self.domains().any(|s| s.service && s.is_live()) {
            return;
        }
        self.drain_console_ring(i);
    }

    #[inline(never)]
    fn drain_console_ring(&mut self, i: usize) {
        let page = self.domains[i].console_page.load();
        let mut cons = page.u32_at(CONSOLE_OUT_CONS).load(Ordering::Relaxed);
        let prod = page.u32_at(CONSOLE_OUT_PROD).load(Ordering::Relaxed);
        // A producer more than a ring ahead is broken: take one ring.
        let avail = prod.wrapping_sub(cons).min(XENCONS_OUT_SIZE as u32);
        let mut buf = [0u8; XENCONS_OUT_SIZE];
        for b in buf.iter_mut().take(avail as usize) {
            *b = page
                .u8_at(CONSOLE_OUT + out_slot(cons) as u64)
                .load(Ordering::Relaxed);
            cons = cons.wrapping_add(1);
        }
        // Consumed either way; shown unless the manifest hides the ring.
        if let Some(c) = console_lock(self.domains[i].id)
            .as_mut()
            .and_then(|g| g.as_mut())
        {
            c.write_ring(&buf[..avail as usize]);
        }
        page.u32_at(CONSOLE_OUT_CONS).store(prod, Ordering::Relaxed);
    }

    /// Frees what dead domains left mapped elsewhere once those mappings
    /// went (called when the frame table reports that a dying frame lost
    /// its last reference: after a grant unmap, a page-table update or
    /// another domain's death).
    pub fn collect_dead(&mut self) {
        for i in 0..self.domains.len() {
            let d = self.domains[i];
            if d.is_live() || d.frames_waiting() == 0 {
                continue;
            }
            let id = d.id;
            let (freed, waiting) = crate::mm::frames::relinquish(id, &[]);
            if freed > 0 {
                crate::info!(
                    "domain {id}: {freed} more frames freed after their last mapping elsewhere went ({waiting} still mapped)"
                );
            }
            d.set_frames_waiting(waiting);
        }
    }

    /// Flushes whatever partial console lines a domain left (under its
    /// console lock).
    pub fn flush_console(&mut self, idx: usize) {
        let Some(d) = self.domains.get(idx) else {
            return;
        };
        if let Some(c) = console_lock(d.id).as_mut().and_then(|g| g.as_mut()) {
            c.flush();
        }
    }

    /// Whether some dead domain's teardown waits for a CPU that still holds
    /// one of its vCPUs (kicked by `lifecycle::end`, that CPU lets go at
    /// its next entry and the teardown follows): the run may not end
    /// before.
    pub fn teardown_held(&self) -> bool {
        (self.domains())
            .filter(|d| d.teardown_pending())
            .any(|d| d.vcpus().iter().any(|&v| self.sched.is_held(v)))
    }
}
