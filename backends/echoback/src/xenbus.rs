//! The xenstore side of an echo connection, as pure functions over key and
//! value text, so that every branch is tested on the host.
//!
//! The toolstack (here: the service domain's setup) creates both device
//! directories; the back-end writes [`backend_nodes`] into its own and
//! switches to `InitWait`. When the front-end's state calls for it
//! ([`on_frontend_state`]), the back-end reads the front-end's directory,
//! checks it with [`parse_frontend`], maps the ring and binds the event
//! channel, and switches to `Connected`.

use core::fmt;

use guest_abi::io::xenbus::XenbusState;
use guest_abi::{GrantRef, Port};

use crate::Features;

/// Back-end node: `1` if `ECHO_OP_UPPERCASE` is served, else `0`.
pub const KEY_FEATURE_UPPERCASE: &str = "feature-uppercase";
/// Front-end node: grant reference of the ring page.
pub const KEY_RING_REF: &str = "ring-ref";
/// Front-end node: the front-end's event channel port, to bind to.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";

/// The nodes the back-end publishes for `features`, as (key, value) pairs.
#[must_use]
pub fn backend_nodes(features: &Features) -> [(&'static str, &'static str); 1] {
    [(
        KEY_FEATURE_UPPERCASE,
        if features.uppercase { "1" } else { "0" },
    )]
}

/// What the front-end published, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Grant of the ring page, to map.
    pub ring_ref: GrantRef,
    /// The front-end's event channel port, to bind to.
    pub event_channel: Port,
}

/// Why the front-end's nodes cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// A required node is absent.
    Missing(&'static str),
    /// A node's value is not a decimal `u32` (or is out of range).
    Invalid(&'static str),
}

impl fmt::Display for XenbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(k) => write!(f, "front-end node `{k}` is missing"),
            Self::Invalid(k) => write!(f, "front-end node `{k}` has an invalid value"),
        }
    }
}

/// Parses a decimal `u32`: surrounding whitespace and a trailing NUL are
/// tolerated; signs, hex, overflow and anything else are not.
fn parse_u32(key: &'static str, text: &str) -> Result<u32, XenbusError> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XenbusError::Invalid(key));
    }
    t.parse().map_err(|_| XenbusError::Invalid(key))
}

/// Checks the front-end's directory, read through `read` (key → value,
/// `None` if the node is absent).
///
/// Only the syntax is checked here: whether `ring-ref` really is a grant of
/// the front-end's, and `event-channel` a port it allocated for us, is
/// checked by the hypervisor when the back-end maps and binds them.
///
/// # Errors
/// [`XenbusError`] naming the first node that is missing or unusable.
pub fn parse_frontend<'a>(
    read: impl Fn(&str) -> Option<&'a str>,
) -> Result<FrontendConfig, XenbusError> {
    let required = |key: &'static str| parse_u32(key, read(key).ok_or(XenbusError::Missing(key))?);
    let ring_ref = GrantRef(required(KEY_RING_REF)?);
    let port = required(KEY_EVENT_CHANNEL)?;
    // Port 0 is reserved and never allocated.
    if port == 0 {
        return Err(XenbusError::Invalid(KEY_EVENT_CHANNEL));
    }
    Ok(FrontendConfig {
        ring_ref,
        event_channel: Port(port),
    })
}

/// What the back-end does when the front-end's `state` node changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendStep {
    /// Nothing yet (stay in `InitWait`).
    Wait,
    /// Read the front-end's nodes ([`parse_frontend`]), map the ring, bind
    /// the event channel and switch to `Connected` (if not connected yet).
    Connect,
    /// Drop the ring and event channel, then switch to this state.
    Disconnect(XenbusState),
}

/// The back-end's reaction to the front-end entering `front`.
#[must_use]
pub fn on_frontend_state(front: XenbusState) -> BackendStep {
    match front {
        XenbusState::Initialised | XenbusState::Connected => BackendStep::Connect,
        XenbusState::Closing => BackendStep::Disconnect(XenbusState::Closing),
        // A front-end that closed, or whose state node vanished: close too.
        XenbusState::Closed | XenbusState::Unknown => BackendStep::Disconnect(XenbusState::Closed),
        XenbusState::Initialising
        | XenbusState::InitWait
        | XenbusState::Reconfiguring
        | XenbusState::Reconfigured => BackendStep::Wait,
    }
}
