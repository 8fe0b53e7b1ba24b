//! Xenbus connection states (`io/xenbus.h`).
//!
//! Each end of a split device publishes its state in xenstore (`state` node)
//! and reacts to the other's. This module owns the numbering only.

#![forbid(unsafe_code)]

use core::fmt;

/// State of one end of a split device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum XenbusState {
    /// Unknown (also: the node is absent).
    Unknown = 0,
    /// Setting up.
    Initialising = 1,
    /// Waiting for the peer's information (back-end, after publishing features).
    InitWait = 2,
    /// Initialised; ready to connect (front-end, after publishing ring and port).
    Initialised = 3,
    /// Connected.
    Connected = 4,
    /// Closing.
    Closing = 5,
    /// Closed.
    Closed = 6,
    /// Reconfiguring.
    Reconfiguring = 7,
    /// Reconfigured.
    Reconfigured = 8,
}

impl XenbusState {
    /// The state with wire value `v`.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// Parse the decimal text stored in a `state` node.
    #[must_use]
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text = crate::types::until_nul(text);
        let s = core::str::from_utf8(text).ok()?;
        Self::from_u32(s.trim().parse().ok()?)
    }

    /// The decimal text to store in a `state` node.
    #[must_use]
    pub const fn as_text(self) -> &'static str {
        match self {
            Self::Unknown => "0",
            Self::Initialising => "1",
            Self::InitWait => "2",
            Self::Initialised => "3",
            Self::Connected => "4",
            Self::Closing => "5",
            Self::Closed => "6",
            Self::Reconfiguring => "7",
            Self::Reconfigured => "8",
        }
    }
}

impl TryFrom<u32> for XenbusState {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        Self::from_u32(v).ok_or(v)
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
