//! `hvm_op` parameters (`public/hvm/hvm_op.h`, `public/hvm/params.h`): the
//! part a PV service domain uses to find other domains' xenstore and console
//! rings, as Xen's dom0less tools do (Xen allocates those event channels
//! itself for domains it builds at boot and records them as HVM params).
//!
//! On the microvisor `HVMOP_get_param` answers for every domain: the
//! caller's own, or any domain's for a privileged caller. For the `*_PFN`
//! parameters of a PV domain the value is the machine frame (PV guests name
//! frames by machine number).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `HVMOP_set_param`.
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param`.
pub const HVMOP_GET_PARAM: u32 = 1;

/// The frame of the domain's xenstore ring page.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// The domain's xenstore event channel (bound by the xenstore domain).
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// The frame of the domain's console ring page.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// The domain's console event channel (bound by the console back-end).
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;

/// `struct xen_hvm_param` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenHvmParam {
    /// The domain asked about (`DOMID_SELF` allowed).
    pub domid: u16,
    /// Padding (zero).
    pub pad: u16,
    /// The `HVM_PARAM_*` index.
    pub index: u32,
    /// The value (output of get, input of set).
    pub value: u64,
}
const _: () = assert!(size_of::<XenHvmParam>() == 16);
