//! The service's mappings of other domains' pages, each at an address of a
//! window this crate reserves for exactly that page: the only `unsafe`
//! outside the virtio HAL (pv-guest-kernel's mapping functions are
//! `unsafe`, since a mapping replaces whatever its address mapped).

use guest_abi::errno::Errno;
use pv_guest_kernel::gnttab::{self, GrantError, GrantedPage};
use pv_guest_kernel::page::{self, MappedPage};
use pv_guest_kernel::{DomId, GrantRef};

/// Maps `dom`'s ring grant `gref` at page `slot` of gnttab's mapping
/// window; `None` when there is no such slot.
pub fn map_ring(dom: DomId, gref: GrantRef, slot: u64) -> Option<Result<GrantedPage, GrantError>> {
    let va = gnttab::map_slot_va(slot)?;
    // SAFETY: each slot of the mapping window holds at most one ring at a
    // time (splitback and the store hand a slot to one device, and unmap
    // before they reuse it); nothing else maps there.
    Some(unsafe { GrantedPage::map(dom, gref, va) })
}

/// Maps frame `mfn` of `dom` at `va`, a page of the service's window for
/// guests' store and console rings (`WINDOW`, two pages a guest slot).
pub fn map_guest_page(dom: DomId, mfn: u64, va: u64) -> Result<MappedPage, Errno> {
    // SAFETY: `va` is the page of a guest slot in the service's own window,
    // used for this guest's page alone while the guest lives.
    unsafe { page::map_foreign(dom, mfn, va) }
}
