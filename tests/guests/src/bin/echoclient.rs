//! echoclient: a guest using its echo device (the tutorial's split device,
//! docs/tutorial-frontend.md) through echofront and the echo back-end in
//! the service domain. Connects through xenstore (xenbus handshake, ring
//! page granted, event channel), then:
//!
//! - one uppercase call and one plain echo, checked byte for byte;
//! - 256 more requests with the whole ring (64) in flight at a time, each
//!   answer checked and matched to its request;
//! - malformed requests (length past the payload area, reserved bytes set,
//!   an unknown operation), each refused with its status while the ring
//!   keeps working;
//! - no protocol error seen (ids, operations, lengths, and the back-end's
//!   response numbers consecutive from 1);
//! - a clean close: the back-end unmaps the ring, so our grant of it can
//!   be ended.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use echofront::device::EchoDevice;
use guest_abi::io::echo::{
    ECHO_MAX_PAYLOAD, ECHO_OP_ECHO, ECHO_OP_UPPERCASE, ECHO_RSP_EOPNOTSUPP, ECHO_RSP_ERROR,
    EchoRequest,
};
use pv_guest_kernel::{StartInfo, events, gnttab, println, test::Reporter, xenstore};

fn text(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("<not UTF-8>")
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    events::init().expect("events");
    gnttab::init(1).expect("grant table");
    let mut xs = xenstore::connect().expect("xenstore");
    let name = xs
        .read("name")
        .map(|v| String::from(text(&v)))
        .unwrap_or_default();
    let mut echo = match EchoDevice::connect(&mut xs) {
        Ok(d) => d,
        Err(e) => {
            t.fail("connect", format_args!("{e:?}"));
            t.finish()
        }
    };
    t.check(
        "features",
        echo.features().uppercase,
        format_args!("{:?}", echo.features()),
    );
    println!(
        "echoclient: connected to the echo back-end in domain {} ({})",
        echo.link().backend,
        echo.link().backend_dir
    );

    // One call each way.
    let greeting = format!("hello from {name}!");
    match echo.call(ECHO_OP_UPPERCASE, greeting.as_bytes()) {
        Ok(r) => {
            println!(
                "echoclient: sent \"{greeting}\", got \"{}\" (response {})",
                text(r.payload()),
                r.seq
            );
            let want = greeting.to_ascii_uppercase();
            t.check(
                "uppercase",
                r.is_ok() && r.payload() == want.as_bytes() && r.seq == 1,
                format_args!("{r:?}"),
            );
        }
        Err(e) => t.fail("uppercase", format_args!("{e:?}")),
    }
    let plain = b"Mixed Case, kept as is";
    match echo.call(ECHO_OP_ECHO, plain) {
        Ok(r) => t.check(
            "echo",
            r.is_ok() && r.payload() == plain && r.seq == 2,
            format_args!("{r:?}"),
        ),
        Err(e) => t.fail("echo", format_args!("{e:?}")),
    }

    // The whole ring in flight, four times over.
    let mut answered = 0;
    let mut wrong = Vec::new();
    for round in 0..4 {
        let mut tags = Vec::new();
        let mut sent = Vec::new();
        while echo.front().free_slots() > 0 {
            let msg = format!("round {round} message {} for {name}", tags.len());
            let msg = &msg.as_bytes()[..msg.len().min(ECHO_MAX_PAYLOAD)];
            match echo.submit(ECHO_OP_UPPERCASE, msg) {
                Ok(tag) => {
                    tags.push(tag);
                    sent.push(msg.to_ascii_uppercase());
                }
                Err(e) => {
                    t.fail("submit", format_args!("{e:?}"));
                    break;
                }
            }
        }
        match echo.wait(&tags) {
            Ok(replies) => {
                for (r, want) in replies.iter().zip(&sent) {
                    answered += 1;
                    if !r.is_ok() || r.payload() != want.as_slice() {
                        wrong.push(r.tag);
                    }
                }
            }
            Err(e) => t.fail("wait", format_args!("{e:?}")),
        }
    }
    t.check(
        "full-ring",
        answered == 256 && wrong.is_empty(),
        format_args!("{answered} answered, wrong: {wrong:?}"),
    );

    // Malformed requests: each refused, the ring goes on.
    let too_long = EchoRequest {
        len: ECHO_MAX_PAYLOAD as u8 + 1,
        ..EchoRequest::default()
    };
    let mut reserved = EchoRequest::new(ECHO_OP_ECHO, b"x").unwrap_or_default();
    reserved._pad = [0xff; 6];
    let unknown = EchoRequest {
        operation: 0x7f,
        ..EchoRequest::default()
    };
    let tags: Vec<u64> = [too_long, reserved, unknown]
        .into_iter()
        .filter_map(|r| echo.submit_raw(r).ok())
        .collect();
    match echo.wait(&tags) {
        Ok(r) => {
            let got: Vec<i16> = r.iter().map(|r| r.status).collect();
            t.check(
                "malformed-refused",
                got == [ECHO_RSP_ERROR, ECHO_RSP_ERROR, ECHO_RSP_EOPNOTSUPP],
                format_args!("{got:?}"),
            );
        }
        Err(e) => t.fail("malformed-refused", format_args!("{e:?}")),
    }
    match echo.call(ECHO_OP_UPPERCASE, b"still working") {
        Ok(r) => t.check(
            "after-malformed",
            r.payload() == b"STILL WORKING",
            format_args!("{r:?}"),
        ),
        Err(e) => t.fail("after-malformed", format_args!("{e:?}")),
    }
    let last = echo.call(ECHO_OP_ECHO, b"").map(|r| r.seq);
    println!("echoclient: the back-end numbered its last response {last:?}");
    let errs = echo.front_mut().take_protocol_errors();
    t.check(
        "no-protocol-errors",
        errs.is_empty() && echo.front().protocol_error_count() == 0,
        format_args!("{errs:?}"),
    );

    let closed = echo.close(&mut xs);
    t.check("close", closed.is_ok(), format_args!("{closed:?}"));
    t.finish()
}

pv_guest_kernel::main!(main);
