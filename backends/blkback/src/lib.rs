//! Block back-end core (work in progress).
#![cfg_attr(not(test), no_std)]
