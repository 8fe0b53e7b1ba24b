//! Xen error numbers (`xen/include/public/errno.h`) and hypercall result decoding.
//!
//! A hypercall returns a signed value in `rax`: zero or a positive value on
//! success, or the negation of one of these numbers on failure. Xen's numbers
//! are the x86 Linux ones, but the set is Xen's, not the host's `libc`: never
//! mix the two. This module owns that set, its names, and the one function that
//! splits a raw return value into success and error.

#![forbid(unsafe_code)]

use core::fmt;

/// A Xen error number (positive, as in `errno.h`; hypercalls return its negation).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($(#[$doc:meta])* $name:ident = $val:literal,)*) => {
        impl Errno {
            $(
                $(#[$doc])*
                pub const $name: Self = Self($val);
            )*

            /// The symbolic name of this error (`"EINVAL"`, …), or `None` for a
            /// number Xen does not define. Aliases report their primary name.
            #[must_use]
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Every error Xen defines, in numeric order (aliases excluded).
            pub const ALL: &'static [Self] = &[$(Self::$name,)*];
        }
    };
}

errnos! {
    /// Operation not permitted.
    EPERM = 1,
    /// No such file or directory (or object).
    ENOENT = 2,
    /// No such process (or domain).
    ESRCH = 3,
    /// Interrupted call. Internal to the hypervisor: never returned to a guest.
    EINTR = 4,
    /// Input/output error.
    EIO = 5,
    /// No such device or address.
    ENXIO = 6,
    /// Argument list too long.
    E2BIG = 7,
    /// Exec format error.
    ENOEXEC = 8,
    /// Bad file number (or handle).
    EBADF = 9,
    /// No child processes.
    ECHILD = 10,
    /// Try again (also `EWOULDBLOCK`).
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Bad address: a guest pointer could not be accessed.
    EFAULT = 14,
    /// Device or resource busy.
    EBUSY = 16,
    /// Already exists.
    EEXIST = 17,
    /// Cross-device link.
    EXDEV = 18,
    /// No such device.
    ENODEV = 19,
    /// Not a directory.
    ENOTDIR = 20,
    /// Is a directory.
    EISDIR = 21,
    /// Invalid argument.
    EINVAL = 22,
    /// File table overflow.
    ENFILE = 23,
    /// Too many open files.
    EMFILE = 24,
    /// No space left.
    ENOSPC = 28,
    /// Read-only file system.
    EROFS = 30,
    /// Too many links.
    EMLINK = 31,
    /// Argument out of domain.
    EDOM = 33,
    /// Result out of range.
    ERANGE = 34,
    /// Resource deadlock would occur (also `EDEADLOCK`).
    EDEADLK = 35,
    /// Name too long.
    ENAMETOOLONG = 36,
    /// No locks available.
    ENOLCK = 37,
    /// Function not implemented: unknown hypercall or sub-operation.
    ENOSYS = 38,
    /// Directory not empty.
    ENOTEMPTY = 39,
    /// No data available.
    ENODATA = 61,
    /// Timer expired (e.g. a single-shot timeout already in the past).
    ETIME = 62,
    /// Not a data message.
    EBADMSG = 74,
    /// Value too large for its type.
    EOVERFLOW = 75,
    /// Illegal byte sequence.
    EILSEQ = 84,
    /// Restart the call. Internal to the hypervisor: never returned to a guest.
    ERESTART = 85,
    /// Not a socket.
    ENOTSOCK = 88,
    /// Message too large.
    EMSGSIZE = 90,
    /// Operation not supported.
    EOPNOTSUPP = 95,
    /// Address already in use.
    EADDRINUSE = 98,
    /// Cannot assign requested address.
    EADDRNOTAVAIL = 99,
    /// No buffer space available.
    ENOBUFS = 105,
    /// Already connected.
    EISCONN = 106,
    /// Not connected.
    ENOTCONN = 107,
    /// Timed out.
    ETIMEDOUT = 110,
    /// Connection refused.
    ECONNREFUSED = 111,
}

impl Errno {
    /// Alias of [`Errno::EAGAIN`].
    pub const EWOULDBLOCK: Self = Self::EAGAIN;
    /// Alias of [`Errno::EDEADLK`].
    pub const EDEADLOCK: Self = Self::EDEADLK;

    /// Largest value a hypercall can return negated as an error: results in
    /// `-MAX..=-1` are errors, everything else is success.
    pub const MAX: i64 = 4095;

    /// The raw hypercall return value for this error (`-errno`).
    #[must_use]
    pub const fn to_ret(self) -> i64 {
        -(self.0 as i64)
    }

    /// The error encoded by a raw hypercall return value, if it is one.
    #[must_use]
    pub const fn from_ret(ret: i64) -> Option<Self> {
        if ret < 0 && ret >= -Self::MAX {
            Some(Self((-ret) as i32))
        } else {
            None
        }
    }
}

/// Split a raw hypercall return value: `-4095..=-1` is an error, anything
/// else is a success value (reinterpreted as unsigned).
pub const fn result_from_raw(ret: i64) -> Result<u64, Errno> {
    match Errno::from_ret(ret) {
        Some(e) => Err(e),
        None => Ok(ret as u64),
    }
}

/// Encode a hypervisor-side result as the value to place in the guest's `rax`.
#[must_use]
pub const fn result_to_raw(res: Result<u64, Errno>) -> i64 {
    match res {
        Ok(v) => v as i64,
        Err(e) => e.to_ret(),
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Errno({n})"),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl core::error::Error for Errno {}
