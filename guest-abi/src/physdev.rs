//! `physdev_op` (`public/physdev.h`): the part a PV service domain uses to
//! drive a device's interrupt line through an event channel: map the GSI to
//! a pirq, bind the pirq (`EVTCHNOP_bind_pirq`), and signal end of
//! interrupt after handling each event.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Signal end of interrupt for a pirq: [`PhysdevEoi`].
pub const PHYSDEVOP_EOI: u32 = 12;
/// Does the pirq need an EOI: [`PhysdevIrqStatusQuery`].
pub const PHYSDEVOP_IRQ_STATUS_QUERY: u32 = 5;
/// Set the virtual I/O privilege level: a `u32`.
pub const PHYSDEVOP_SET_IOPL: u32 = 6;
/// Map a GSI (or MSI) to a pirq: [`PhysdevMapPirq`].
pub const PHYSDEVOP_MAP_PIRQ: u32 = 13;
/// Undo a map: [`PhysdevUnmapPirq`].
pub const PHYSDEVOP_UNMAP_PIRQ: u32 = 14;

/// `PhysdevMapPirq::type_`: a GSI (an I/O APIC line).
pub const MAP_PIRQ_TYPE_GSI: i32 = 1;
/// `PhysdevIrqStatusQuery::flags`: the pirq needs `PHYSDEVOP_eoi`.
pub const XENIRQSTAT_NEEDS_EOI: u32 = 1;

/// `struct physdev_eoi`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PhysdevEoi {
    /// The pirq.
    pub irq: u32,
}

/// `struct physdev_irq_status_query`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PhysdevIrqStatusQuery {
    /// The pirq (in).
    pub irq: u32,
    /// `XENIRQSTAT_*` (out).
    pub flags: u32,
}

/// `struct physdev_map_pirq` (40 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PhysdevMapPirq {
    /// The domain the pirq is for (`DOMID_SELF` allowed).
    pub domid: u16,
    /// Padding.
    pub _pad: u16,
    /// `MAP_PIRQ_TYPE_*`.
    pub type_: i32,
    /// The GSI (for `MAP_PIRQ_TYPE_GSI`).
    pub index: i32,
    /// In: the pirq wanted (-1: any); out: the pirq.
    pub pirq: i32,
    /// MSI: bus (and segment).
    pub bus: i32,
    /// MSI: device and function.
    pub devfn: i32,
    /// MSI-X: entry number.
    pub entry_nr: i32,
    /// Padding.
    pub _pad2: u32,
    /// MSI-X: table base.
    pub table_base: u64,
}
const _: () = assert!(size_of::<PhysdevMapPirq>() == 40);

/// `struct physdev_unmap_pirq`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PhysdevUnmapPirq {
    /// The domain.
    pub domid: u16,
    /// Padding.
    pub _pad: u16,
    /// The pirq.
    pub pirq: i32,
}
