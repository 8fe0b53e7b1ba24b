//! The guest's machine-level pieces: the ELF notes that make the image a Xen
//! PV kernel, the hypercall page the hypervisor fills in, the entry point
//! (ring 3, `rsi` = start_info) and the boot stack. All of the library's
//! `unsafe` is here.

pub mod mem;
pub mod shared;
pub mod thread;
pub mod traps;
pub mod vcpu;

/// A port handler (`fn(u32)`) stored as a word, read and written without a
/// lock (the event upcall reads it).
pub(crate) struct HandlerSlot(core::sync::atomic::AtomicUsize);

impl HandlerSlot {
    pub(crate) const fn empty() -> Self {
        Self(core::sync::atomic::AtomicUsize::new(0))
    }

    pub(crate) fn set(&self, h: Option<fn(u32)>) {
        self.0.store(
            h.map_or(0, |f| f as usize),
            core::sync::atomic::Ordering::Release,
        );
    }

    pub(crate) fn get(&self) -> Option<fn(u32)> {
        let bits = self.0.load(core::sync::atomic::Ordering::Acquire);
        // SAFETY: a non-zero value was stored by `set` from a `fn(u32)`, and
        // function pointers are never null; 0 means none.
        (bits != 0).then(|| unsafe { core::mem::transmute::<usize, fn(u32)>(bits) })
    }
}

/// Size of the boot stack the entry point switches to.
pub const STACK_SIZE: usize = 64 * 1024;

// The Xen ELF notes, the hypercall page and `_start` (a switch to the boot
// stack, then `rt::start` with the start_info page), from guest-abi's macros.
#[cfg(target_os = "none")]
guest_abi::xen_elfnotes! {
    guest_os: "microvisor-pv-guest",
    guest_version: "0.1",
    entry: _start,
}
#[cfg(target_os = "none")]
guest_abi::hypercall_page!();
#[cfg(target_os = "none")]
guest_abi::pv_entry!(crate::rt::start, stack = STACK_SIZE);

unsafe extern "C" {
    static hypercall_page: [u8; 4096];
}

/// Address of the hypercall page (stub `n` is at `+ 32 * n`).
pub fn hypercall_page_addr() -> u64 {
    (&raw const hypercall_page) as u64
}
