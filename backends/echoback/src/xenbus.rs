//! The xenstore side of an echo device: the one node the back-end
//! publishes. Everything else (both directories, the handshake, the
//! front-end's `ring-ref` and `event-channel`) is the framework's
//! (`splitback`), through [`crate::Echo`].

use crate::Features;

/// Back-end node: `1` if `ECHO_OP_UPPERCASE` is served, else `0`.
pub const KEY_FEATURE_UPPERCASE: &str = "feature-uppercase";

/// The nodes the back-end publishes for `features`, as (key, value) pairs.
#[must_use]
pub fn backend_nodes(features: &Features) -> [(&'static str, &'static str); 1] {
    [(
        KEY_FEATURE_UPPERCASE,
        if features.uppercase { "1" } else { "0" },
    )]
}
