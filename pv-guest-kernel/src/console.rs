//! Console output through `console_io(CONSOLEIO_write)`: the `print!` and
//! `println!` macros. Output is unbuffered; the hypervisor assembles lines.

use core::fmt::{self, Write};

/// A `fmt::Write` sink that writes to the hypervisor console.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Writes raw bytes to the console, retrying partial writes.
pub fn write_bytes(mut b: &[u8]) {
    while !b.is_empty() {
        match guest_abi::hypercall::console_io_write(b) {
            Ok(n) if n > 0 && n <= b.len() => b = &b[n..],
            _ => return,
        }
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = Console.write_fmt(args);
}

/// Prints to the hypervisor console.
#[macro_export]
macro_rules! print {
    ($($t:tt)*) => { $crate::console::_print(format_args!($($t)*)) };
}

/// Prints a line to the hypervisor console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($t:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($t)*))) };
}
