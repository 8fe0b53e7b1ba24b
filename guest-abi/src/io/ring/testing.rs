//! A shared ring page of plain memory for host tests (feature `testing`).
//!
//! [`MemPage`] implements [`SharedPage`] over a heap buffer that every clone
//! shares, so a test hands one clone to each simulated end of a ring. It
//! also lets a test play a hostile peer: [`MemPage::with`] reads or rewrites
//! the raw bytes at any moment, and [`MemPage::on_store`] runs a hook right
//! after one end stores a header index (to race that end's final check, for
//! example). Barriers are no-ops: both ends run on one thread.
//!
//! ```
//! use guest_abi::io::echo::{EchoRequest, EchoResponse};
//! use guest_abi::io::ring::{BackRing, FrontRing, testing::MemPage};
//!
//! let page = MemPage::new();
//! let mut front = FrontRing::<_, EchoRequest, EchoResponse>::init(page.clone());
//! let mut back = BackRing::<_, EchoRequest, EchoResponse>::new(page.clone());
//! front.push_request(&EchoRequest::new(0, b"hi").unwrap()).unwrap();
//! front.push_requests_and_check_notify();
//! assert_eq!(back.consume_request().unwrap().unwrap().len, 2);
//! ```

extern crate alloc;

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::SharedPage;
use crate::types::PAGE_SIZE;

/// What [`MemPage::on_store`] runs: the page's bytes, after the store.
pub type StoreHook = Box<dyn FnMut(&mut [u8])>;

struct Inner {
    mem: RefCell<Vec<u8>>,
    hook: RefCell<Option<(usize, StoreHook)>>,
}

/// One page of plain memory shared by every clone (see the module docs).
/// Accesses past the page panic: a ring end that makes one has a bug the
/// test should show.
#[derive(Clone)]
pub struct MemPage(Rc<Inner>);

impl Default for MemPage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemPage {
    /// A page filled with `0xEE`, so that a ring end relying on memory it
    /// did not initialise reads garbage, as it would on a real page.
    #[must_use]
    pub fn new() -> Self {
        Self::filled(0xEE)
    }

    /// A page with every byte `byte`.
    #[must_use]
    pub fn filled(byte: u8) -> Self {
        Self(Rc::new(Inner {
            mem: RefCell::new(vec![byte; PAGE_SIZE]),
            hook: RefCell::new(None),
        }))
    }

    /// Runs `f` on the raw bytes (a peer reading or writing the page).
    pub fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut self.0.mem.borrow_mut())
    }

    /// A copy of the page's bytes.
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        self.0.mem.borrow().clone()
    }

    /// The `u32` at `off` (native endian, as the ring indices).
    #[must_use]
    pub fn u32_at(&self, off: usize) -> u32 {
        let m = self.0.mem.borrow();
        u32::from_ne_bytes([m[off], m[off + 1], m[off + 2], m[off + 3]])
    }

    /// Writes the `u32` at `off` without running the hook.
    pub fn set_u32(&self, off: usize, v: u32) {
        self.0.mem.borrow_mut()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    /// From now on, runs `hook` right after every [`SharedPage::store_u32`]
    /// at offset `off` (replacing any earlier hook).
    pub fn on_store(&self, off: usize, hook: impl FnMut(&mut [u8]) + 'static) {
        *self.0.hook.borrow_mut() = Some((off, Box::new(hook)));
    }

    /// Whether `other` is a clone of this page.
    #[must_use]
    pub fn same_page(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl SharedPage for MemPage {
    fn load_u32(&self, off: usize) -> u32 {
        self.u32_at(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.set_u32(off, v);
        let hook = self.0.hook.borrow_mut().take();
        if let Some((at, mut h)) = hook {
            if at == off {
                h(&mut self.0.mem.borrow_mut());
            }
            let mut slot = self.0.hook.borrow_mut();
            // The hook may have installed another one: keep the newer.
            if slot.is_none() {
                *slot = Some((at, h));
            }
        }
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.0.mem.borrow()[off..off + out.len()]);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.0.mem.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
    fn fence(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn clones_share_bytes_and_hooks_fire_on_their_offset_only() {
        let a = MemPage::new();
        let b = a.clone();
        assert!(a.same_page(&b));
        assert!(!a.same_page(&MemPage::new()));
        assert_eq!(a.u32_at(0), 0xEEEE_EEEE);
        b.store_u32(8, 7);
        assert_eq!(a.load_u32(8), 7);
        let fired = Rc::new(Cell::new(0));
        let f = fired.clone();
        a.on_store(4, move |m| {
            f.set(f.get() + 1);
            m[100] = 1;
        });
        b.store_u32(8, 9);
        assert_eq!(fired.get(), 0);
        b.store_u32(4, 9);
        b.store_u32(4, 10);
        assert_eq!(fired.get(), 2);
        assert_eq!(a.snapshot()[100], 1);
        let mut out = [0u8; 4];
        a.read_bytes(4, &mut out);
        assert_eq!(u32::from_ne_bytes(out), 10);
        a.write_bytes(200, &[1, 2]);
        assert_eq!(b.with(|m| (m[200], m[201])), (1, 2));
        assert_eq!(MemPage::filled(0).u32_at(4092), 0);
    }
}
