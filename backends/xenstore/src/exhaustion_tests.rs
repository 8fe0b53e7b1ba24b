//! Resource exhaustion: a client that floods requests and never reads its
//! replies, fills the store, opens giant transactions or sets many watches
//! makes the service hold at most its quotas, gets xenstored's errors, and
//! leaves every other client's service unchanged.

use std::format;
use std::string::String;
use std::vec::Vec;

use guest_abi::Errno;
use guest_abi::io::xenstore::*;

use crate::tests::{Bench, nul};
use crate::{ConnId, Limits, wire};

fn err(e: Errno) -> String {
    String::from(e.name().unwrap())
}

/// `n` copies of request `ty` with `payload`, as one byte stream.
fn stream(n: usize, ty: u32, payload: &[u8]) -> Vec<u8> {
    (0..n)
        .flat_map(|i| wire::encode(ty, i as u32, 0, payload))
        .collect()
}

/// Offers `bytes` the way the ring transport does (at most a ring's worth
/// at a time, keeping what was not taken) until the service takes no more.
/// Returns how many bytes it took.
fn offer(b: &mut Bench, c: ConnId, bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + XENSTORE_RING_SIZE).min(bytes.len());
        let fed = b.xs.feed(c, &bytes[at..end]).unwrap();
        if fed.consumed == 0 {
            break;
        }
        at += fed.consumed;
    }
    at
}

/// Reads every queued message of `c`: (replies, watch events).
fn drain(b: &mut Bench, c: ConnId) -> (usize, usize) {
    let (mut replies, mut events) = (0, 0);
    while let Some(m) = b.xs.pop_output(c) {
        if wire::parse(&m).unwrap().header.type_ == XS_WATCH_EVENT {
            events += 1;
        } else {
            replies += 1;
        }
    }
    (replies, events)
}

#[test]
fn a_client_that_never_reads_is_not_read_past_its_outstanding_quota() {
    let mut b = Bench::new();
    let g = b.guest(1);
    let other = b.guest(2);
    // Large replies: every READ returns about 2 KiB.
    b.write(g, "big", &"v".repeat(2000)).unwrap();
    let flood = stream(5000, XS_READ, &nul("big"));
    let taken = offer(&mut b, g, &flood);
    let c = b.xs.connection(g).unwrap();
    let limits = Limits::default();
    assert_eq!(c.outstanding(), limits.outstanding_per_domain);
    assert!(taken < flood.len() / 100, "took {taken} bytes");
    assert!(c.queued_bytes() <= limits.outstanding_per_domain * (16 + 2000));
    assert!(!b.xs.accepts_input(g));
    // Offering more takes nothing and queues nothing.
    let before = b.xs.memory_used(g).unwrap();
    assert_eq!(b.xs.feed(g, &flood[taken..]).unwrap().consumed, 0);
    assert_eq!(b.xs.memory_used(g), Some(before));
    assert!(before <= limits.memory_per_domain);
    // Everyone else is served as before.
    b.write(other, "x", "1").unwrap();
    assert_eq!(b.read(other, "x").unwrap(), "1");
    assert!(b.xs.accepts_input(other));
    // Once the client reads, it is served again, and nothing was lost.
    let mut answered = 0;
    let mut at = taken;
    loop {
        answered += drain(&mut b, g).0;
        if at == flood.len() {
            break;
        }
        at += offer(&mut b, g, &flood[at..]);
    }
    assert_eq!(answered, 5000, "every request answered exactly once");
}

#[test]
fn privileged_clients_are_not_held_back() {
    let mut b = Bench::new();
    let d = b.dom0;
    let flood = stream(100, XS_READ, &nul("/"));
    assert_eq!(offer(&mut b, d, &flood), flood.len());
    assert_eq!(b.xs.connection(d).unwrap().outstanding(), 100);
}

#[test]
fn ignored_and_unknown_connections_take_no_input() {
    let mut b = Bench::new();
    let g = b.guest(1);
    let mut bad = wire::encode(XS_READ, 1, 0, b"");
    bad[12..16].copy_from_slice(&(XENSTORE_PAYLOAD_MAX as u32 + 1).to_ne_bytes());
    assert!(b.xs.feed(g, &bad).is_err());
    assert!(!b.xs.accepts_input(g));
    assert!(!b.xs.accepts_input(ConnId(999)));
}

#[test]
fn node_memory_quota_gives_enomem_and_frees_on_removal() {
    let limits = Limits {
        memory_per_domain: 64 * 1024,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits.clone());
    let g = b.guest(1);
    let other = b.guest(2);
    let value = "v".repeat(1900);
    let mut made = 0;
    let refusal = loop {
        match b.write(g, &format!("n{made}"), &value) {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 1000, "no quota");
    };
    assert_eq!(refusal, err(Errno::ENOMEM));
    assert!(made >= 25, "only {made} nodes of ~2 KiB fit in 64 KiB");
    let used = b.xs.memory_used(g).unwrap();
    assert!(used <= limits.memory_per_domain, "{used}");
    assert_eq!(b.xs.store().owned_bytes(1), used, "all of it is nodes");
    // Removing frees quota, and the bytes are booked exactly.
    for i in 0..made {
        b.rm(g, &format!("n{i}")).unwrap();
    }
    b.write(g, "again", &value).unwrap();
    b.xs.store().check().unwrap();
    // Another guest's quota is its own.
    b.write(other, "mine", &value).unwrap();
    // dom0 is bound by none of this.
    for i in 0..100 {
        b.write(b.dom0, &format!("/dom0/{i}"), &value).unwrap();
    }
}

#[test]
fn giant_transactions_are_held_to_the_memory_quota() {
    let limits = Limits {
        memory_per_domain: 256 * 1024,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits.clone());
    let g = b.guest(1);
    let idle = b.xs.memory_used(g).unwrap();
    let value = "t".repeat(1900);
    let mut refused = false;
    let mut txs = Vec::new();
    for t in 0..limits.transactions_per_domain {
        let tx = b.tx_start(g);
        txs.push(tx);
        for i in 0..2000 {
            match b.write_tx(g, tx, &format!("t{t}/n{i}"), &value) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e, err(Errno::ENOMEM));
                    refused = true;
                    break;
                }
            }
        }
        let used = b.xs.memory_used(g).unwrap();
        assert!(used <= limits.memory_per_domain, "{used}");
    }
    assert!(refused);
    // Reads in a transaction are journaled too, and held to the quota.
    let deep: String = (0..900).map(|_| "/d").collect();
    let _ = b.read_tx(g, txs[0], &format!("x{deep}"));
    assert!(b.xs.memory_used(g).unwrap() <= limits.memory_per_domain);
    // Ending them gives everything back.
    for tx in txs {
        let _ = b.tx_end(g, tx, false);
    }
    assert_eq!(b.xs.memory_used(g), Some(idle));
}

#[test]
fn a_transaction_costs_its_copy_of_the_map() {
    let mut b = Bench::new();
    let g = b.guest(1);
    for i in 0..200 {
        b.write(b.dom0, &format!("/pad/{i}"), "").unwrap();
    }
    let idle = b.xs.memory_used(g).unwrap();
    let tx = b.tx_start(g);
    let with_tx = b.xs.memory_used(g).unwrap();
    assert!(
        with_tx >= idle + 200 * crate::store::COPY_ENTRY_COST,
        "{idle} -> {with_tx}"
    );
    // Over the quota, no transaction can start.
    let tight = Limits {
        memory_per_domain: with_tx - idle + 1,
        ..Limits::default()
    };
    let mut b2 = Bench::with_limits(tight);
    let g2 = b2.guest(1);
    for i in 0..200 {
        b2.write(b2.dom0, &format!("/pad/{i}"), "").unwrap();
    }
    b2.write(g2, "fill", "").unwrap();
    assert_eq!(
        b2.req(g2, XS_TRANSACTION_START, 0, b"\0"),
        Err(err(Errno::ENOMEM))
    );
    b.tx_end(g, tx, false).unwrap();
}

#[test]
fn watches_are_held_to_the_memory_quota() {
    let limits = Limits {
        watches_per_domain: 100_000,
        memory_per_domain: 64 * 1024,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits.clone());
    let g = b.guest(1);
    let token = "k".repeat(3000);
    let mut set = 0;
    let refusal = loop {
        match b.watch(g, &format!("w{set}"), &token) {
            Ok(()) => {
                set += 1;
                drain(&mut b, g);
            }
            Err(e) => break e,
        }
        assert!(set < 10_000, "no quota");
    };
    assert_eq!(refusal, err(Errno::ENOMEM));
    assert!(b.xs.memory_used(g).unwrap() <= limits.memory_per_domain);
    // Unwatching gives the memory back.
    let before = b.xs.memory_used(g).unwrap();
    b.req(g, XS_UNWATCH, 0, &[nul("w0"), nul(&token)].concat())
        .unwrap();
    assert!(b.xs.memory_used(g).unwrap() < before - 3000);
}

#[test]
fn unread_watch_events_are_dropped_at_the_memory_quota() {
    let limits = Limits {
        memory_per_domain: 16 * 1024,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits.clone());
    let g = b.guest(1);
    b.write(b.dom0, "/shared", "").unwrap();
    b.set_perms(b.dom0, "/shared", &["n0", "r1"]).unwrap();
    b.watch(g, "/shared", "t").unwrap();
    drain(&mut b, g);
    for i in 0..2000 {
        b.write(b.dom0, &format!("/shared/n{i}"), "").unwrap();
        assert!(b.xs.memory_used(g).unwrap() <= limits.memory_per_domain);
    }
    let (_, events) = drain(&mut b, g);
    assert!(events > 0 && events < 2000, "{events}");
}

#[test]
fn the_transport_rejoins_after_back_pressure() {
    // A client that stops at the quota then reads resumes mid-message:
    // a request split across the point where input stopped is intact.
    let mut b = Bench::new();
    let g = b.guest(1);
    b.write(g, "v", "x").unwrap();
    let flood = stream(60, XS_READ, &nul("v"));
    let mut at = 0;
    let mut replies = 0;
    while at < flood.len() {
        // Odd chunk sizes, so the stop falls inside messages.
        let end = (at + 37).min(flood.len());
        let fed = b.xs.feed(g, &flood[at..end]).unwrap();
        at += fed.consumed;
        if fed.consumed == 0 {
            replies += drain(&mut b, g).0;
        }
    }
    replies += drain(&mut b, g).0;
    assert_eq!(replies, 60);
}

#[test]
fn a_domain_at_its_memory_quota_is_still_served_so_it_can_free_memory() {
    let limits = Limits {
        memory_per_domain: 128 * 1024,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits.clone());
    let g = b.guest(1);
    let idle = b.xs.memory_used(g).unwrap();
    let tx = b.tx_start(g);
    let value = "f".repeat(1900);
    let mut i = 0;
    while b.write_tx(g, tx, &format!("f{i}"), &value).is_ok() {
        i += 1;
        assert!(i < 1000, "no quota");
    }
    // Full, and past the quota with replies it has not read yet: refused,
    // but still read and answered, so it can give back.
    b.write(b.dom0, "/local/domain/1/r", &value).unwrap();
    for id in 0..5 {
        b.xs.handle(g, &wire::encode(XS_READ, id, 0, &nul("r")))
            .unwrap();
    }
    assert!(b.xs.memory_used(g).unwrap() > limits.memory_per_domain);
    assert!(b.xs.accepts_input(g));
    drain(&mut b, g);
    assert_eq!(b.write(g, "more", &value), Err(err(Errno::ENOMEM)));
    b.tx_end(g, tx, false).unwrap();
    b.rm(g, "r").unwrap();
    assert_eq!(b.xs.memory_used(g), Some(idle));
    b.write(g, "more", &value).unwrap();
}

/// Domains each within their own quota cannot together make the service
/// hold more than `memory_total`: past it every unprivileged domain's
/// growing request gets ENOMEM, reads still work, and the memory comes
/// back when one of them frees its nodes.
#[test]
fn domains_together_are_held_to_the_total_quota() {
    let limits = Limits {
        nodes_per_domain: 100_000,
        memory_per_domain: 64 * 1024,
        memory_total: 96 * 1024,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits.clone());
    let guests: Vec<ConnId> = (1..=3).map(|d| b.guest(d)).collect();
    let value = "v".repeat(1024);
    let mut written = [0usize; 3];
    for (k, &g) in guests.iter().enumerate() {
        loop {
            match b.write(g, &format!("n{}", written[k]), &value) {
                Ok(()) => written[k] += 1,
                Err(e) => {
                    assert_eq!(e, err(Errno::ENOMEM));
                    break;
                }
            }
            assert!(written[k] < 1000, "no quota");
        }
    }
    let total: usize = guests.iter().map(|&g| b.xs.memory_used(g).unwrap()).sum();
    assert!(total <= limits.memory_total, "{total}");
    // The first guest filled its own quota; the others were stopped by the
    // total one, the last with almost nothing.
    assert!(written[0] > 0 && written[2] < written[0], "{written:?}");
    for &g in &guests {
        assert!(b.xs.memory_used(g).unwrap() <= limits.memory_per_domain);
        let k = guests.iter().position(|&x| x == g).unwrap();
        let want = if written[k] > 0 {
            Ok(1024)
        } else {
            Err(err(Errno::ENOENT))
        };
        assert_eq!(b.read(g, "n0").map(|v| v.len()), want);
    }
    // The first gives its nodes back: the last can write again.
    for i in 0..written[0] {
        b.req(guests[0], XS_RM, 0, &nul(&format!("n{i}"))).unwrap();
    }
    assert!(b.write(guests[2], "again", &value).is_ok());
}
