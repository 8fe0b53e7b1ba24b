//! Behaviour tests of the whole service, through its wire interface: every
//! request type, every permission rule, watches and transactions.

use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use guest_abi::io::xenstore::*;
use guest_abi::{DomId, Errno};

use crate::wire::{self, FrameError};
use crate::{Action, ConnId, HandleError, Limits, Xenstore};

/// A test bench: the service, dom0's connection and guest connections.
pub(crate) struct Bench {
    pub xs: Xenstore,
    pub dom0: ConnId,
    next_req: u32,
    events: BTreeMap<ConnId, Vec<(String, String)>>,
}

pub(crate) type Res<T> = Result<T, String>;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Bench {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let mut xs = Xenstore::with_limits(limits);
        // Every request below runs under the counting gate: each test also
        // checks that nothing allocates past what the gate granted.
        xs.set_heap_gate(crate::heap_tests::gate);
        let dom0 = xs.connect(DomId(0), true);
        Self {
            xs,
            dom0,
            next_req: 100,
            events: BTreeMap::new(),
        }
    }

    /// Introduce `domid` with a home directory, as a toolstack would.
    pub fn guest(&mut self, domid: u16) -> ConnId {
        crate::heap_tests::checked(|| self.xs.create_home(DomId(domid))).unwrap();
        let c = crate::heap_tests::checked(|| {
            self.xs
                .introduce(DomId(domid), 0x1000 + u64::from(domid), 5)
        })
        .unwrap();
        self.xs.take_actions();
        c
    }

    /// Send one request and return the reply payload or the error name.
    /// Watch events met on the way are kept for [`Bench::events`].
    pub fn req(&mut self, c: ConnId, ty: u32, tx: u32, payload: &[u8]) -> Res<Vec<u8>> {
        self.next_req += 1;
        let req_id = self.next_req;
        let msg = wire::encode(ty, req_id, tx, payload);
        crate::heap_tests::checked(|| self.xs.handle(c, &msg)).unwrap();
        let mut reply = None;
        while let Some(m) = self.xs.pop_output(c) {
            let msg = wire::parse(&m).expect("the service frames its output");
            if msg.header.type_ == XS_WATCH_EVENT {
                assert_eq!((msg.header.req_id, msg.header.tx_id), (0, 0));
                self.events
                    .entry(c)
                    .or_default()
                    .push(split_event(msg.payload));
                continue;
            }
            assert!(reply.is_none(), "one reply per request");
            assert_eq!(msg.header.req_id, req_id, "req_id echoed");
            assert_eq!(msg.header.tx_id, tx, "tx_id echoed");
            reply = Some(if msg.header.type_ == XS_ERROR {
                assert_eq!(msg.payload.last(), Some(&0));
                Err(text(&msg.payload[..msg.payload.len() - 1]))
            } else {
                assert_eq!(msg.header.type_, ty, "type echoed");
                Ok(msg.payload.to_vec())
            });
        }
        reply.expect("a reply")
    }

    /// Watch events delivered to `c` since the last call.
    pub fn events(&mut self, c: ConnId) -> Vec<(String, String)> {
        while let Some(m) = self.xs.pop_output(c) {
            let msg = wire::parse(&m).unwrap();
            assert_eq!(msg.header.type_, XS_WATCH_EVENT, "no stray replies");
            self.events
                .entry(c)
                .or_default()
                .push(split_event(msg.payload));
        }
        self.events.remove(&c).unwrap_or_default()
    }

    pub fn read(&mut self, c: ConnId, p: &str) -> Res<String> {
        self.read_tx(c, 0, p)
    }
    pub fn read_tx(&mut self, c: ConnId, tx: u32, p: &str) -> Res<String> {
        self.req(c, XS_READ, tx, &nul(p)).map(|v| text(&v))
    }
    pub fn write(&mut self, c: ConnId, p: &str, v: &str) -> Res<()> {
        self.write_tx(c, 0, p, v)
    }
    pub fn write_tx(&mut self, c: ConnId, tx: u32, p: &str, v: &str) -> Res<()> {
        let mut payload = nul(p);
        payload.extend_from_slice(v.as_bytes());
        self.req(c, XS_WRITE, tx, &payload)
            .map(|r| assert_eq!(r, b"OK\0"))
    }
    pub fn mkdir(&mut self, c: ConnId, p: &str) -> Res<()> {
        self.req(c, XS_MKDIR, 0, &nul(p))
            .map(|r| assert_eq!(r, b"OK\0"))
    }
    pub fn rm(&mut self, c: ConnId, p: &str) -> Res<()> {
        self.rm_tx(c, 0, p)
    }
    pub fn rm_tx(&mut self, c: ConnId, tx: u32, p: &str) -> Res<()> {
        self.req(c, XS_RM, tx, &nul(p))
            .map(|r| assert_eq!(r, b"OK\0"))
    }
    pub fn dir(&mut self, c: ConnId, p: &str) -> Res<Vec<String>> {
        self.dir_tx(c, 0, p)
    }
    pub fn dir_tx(&mut self, c: ConnId, tx: u32, p: &str) -> Res<Vec<String>> {
        self.req(c, XS_DIRECTORY, tx, &nul(p)).map(|v| strings(&v))
    }
    pub fn get_perms(&mut self, c: ConnId, p: &str) -> Res<Vec<String>> {
        self.req(c, XS_GET_PERMS, 0, &nul(p)).map(|v| strings(&v))
    }
    pub fn set_perms(&mut self, c: ConnId, p: &str, perms: &[&str]) -> Res<()> {
        let mut payload = nul(p);
        for x in perms {
            payload.extend(nul(x));
        }
        self.req(c, XS_SET_PERMS, 0, &payload)
            .map(|r| assert_eq!(r, b"OK\0"))
    }
    pub fn watch(&mut self, c: ConnId, p: &str, token: &str) -> Res<()> {
        let mut payload = nul(p);
        payload.extend(nul(token));
        self.req(c, XS_WATCH, 0, &payload)
            .map(|r| assert_eq!(r, b"OK\0"))
    }
    pub fn unwatch(&mut self, c: ConnId, p: &str, token: &str) -> Res<()> {
        let mut payload = nul(p);
        payload.extend(nul(token));
        self.req(c, XS_UNWATCH, 0, &payload)
            .map(|r| assert_eq!(r, b"OK\0"))
    }
    pub fn tx_start(&mut self, c: ConnId) -> u32 {
        let r = self.req(c, XS_TRANSACTION_START, 0, b"\0").unwrap();
        assert_eq!(r.last(), Some(&0));
        text(&r[..r.len() - 1]).parse().unwrap()
    }
    pub fn tx_end(&mut self, c: ConnId, tx: u32, commit: bool) -> Res<()> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.req(c, XS_TRANSACTION_END, tx, arg)
            .map(|r| assert_eq!(r, b"OK\0"))
    }
}

pub(crate) fn nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn strings(payload: &[u8]) -> Vec<String> {
    wire::strings(payload).map(text).collect()
}

fn split_event(payload: &[u8]) -> (String, String) {
    let s = strings(payload);
    assert_eq!(s.len(), 2, "event is path and token");
    (s[0].clone(), s[1].clone())
}

fn ev(p: &str, t: &str) -> (String, String) {
    (p.to_string(), t.to_string())
}

fn err(e: Errno) -> String {
    e.name().unwrap().to_string()
}

// ---- basic operations -----------------------------------------------------

#[test]
fn write_then_read_and_implicit_parents() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/a/b/c", "hello").unwrap();
    assert_eq!(b.read(d, "/a/b/c").unwrap(), "hello");
    assert_eq!(b.read(d, "/a/b").unwrap(), "", "parents are created empty");
    assert_eq!(b.dir(d, "/a").unwrap(), ["b"]);
    b.write(d, "/a/b/c", "").unwrap();
    assert_eq!(b.read(d, "/a/b/c").unwrap(), "");
    // Values are binary.
    let payload = [&nul("/bin")[..], &[0, 1, 0, 255]].concat();
    b.req(d, XS_WRITE, 0, &payload).unwrap();
    assert_eq!(b.req(d, XS_READ, 0, &nul("/bin")).unwrap(), [0, 1, 0, 255]);
    assert_eq!(b.read(d, "/nope"), Err(err(Errno::ENOENT)));
    b.xs.store().check().unwrap();
}

#[test]
fn mkdir_keeps_existing_values() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.mkdir(d, "/x/y").unwrap();
    assert_eq!(b.read(d, "/x/y").unwrap(), "");
    b.write(d, "/x/y", "v").unwrap();
    b.mkdir(d, "/x/y").unwrap();
    assert_eq!(b.read(d, "/x/y").unwrap(), "v");
}

#[test]
fn rm_is_recursive_and_tolerant() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/a/b/c", "1").unwrap();
    b.write(d, "/a/d", "2").unwrap();
    b.rm(d, "/a/b").unwrap();
    assert_eq!(b.read(d, "/a/b/c"), Err(err(Errno::ENOENT)));
    assert_eq!(b.dir(d, "/a").unwrap(), ["d"]);
    b.rm(d, "/a/b").unwrap();
    assert_eq!(
        b.rm(d, "/a/b/c"),
        Err(err(Errno::ENOENT)),
        "parent missing too"
    );
    assert_eq!(b.rm(d, "/"), Err(err(Errno::EINVAL)));
    b.xs.store().check().unwrap();
}

#[test]
fn directory_listing() {
    let mut b = Bench::new();
    let d = b.dom0;
    for n in ["c", "a", "b"] {
        b.write(d, &format!("/dir/{n}"), n).unwrap();
    }
    assert_eq!(b.dir(d, "/dir").unwrap(), ["a", "b", "c"]);
    assert_eq!(b.dir(d, "/dir/a").unwrap(), Vec::<String>::new());
    assert_eq!(b.dir(d, "/missing"), Err(err(Errno::ENOENT)));
}

#[test]
fn directory_part_pages_long_listings() {
    let mut b = Bench::new();
    let d = b.dom0;
    let names: Vec<String> = (0..400)
        .map(|i| format!("child-with-a-long-name-{i:04}"))
        .collect();
    for n in &names {
        b.mkdir(d, &format!("/big/{n}")).unwrap();
    }
    assert_eq!(
        b.req(d, XS_DIRECTORY, 0, &nul("/big")),
        Err(err(Errno::E2BIG))
    );
    let mut got = Vec::new();
    let mut off = 0usize;
    let mut generation = None;
    loop {
        let payload = [nul("/big"), nul(&off.to_string())].concat();
        let r = b.req(d, XS_DIRECTORY_PART, 0, &payload).unwrap();
        assert!(r.len() <= XENSTORE_PAYLOAD_MAX);
        let parts = strings(&r);
        let g = parts[0].clone();
        assert_eq!(*generation.get_or_insert(g.clone()), g, "generation stable");
        let chunk: Vec<String> = parts[1..].to_vec();
        if chunk.last().is_some_and(String::is_empty) {
            got.extend(chunk[..chunk.len() - 1].iter().cloned());
            break;
        }
        off += chunk.iter().map(|c| c.len() + 1).sum::<usize>();
        got.extend(chunk);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(got, sorted);
    assert_eq!(
        b.req(d, XS_DIRECTORY_PART, 0, &nul("/big")),
        Err(err(Errno::EINVAL))
    );
}

#[test]
fn perms_round_trip_and_validation() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.mkdir(d, "/p").unwrap();
    assert_eq!(b.get_perms(d, "/p").unwrap(), ["n0"]);
    b.set_perms(d, "/p", &["r3", "w4", "n5", "b6"]).unwrap();
    assert_eq!(b.get_perms(d, "/p").unwrap(), ["r3", "w4", "n5", "b6"]);
    assert_eq!(b.set_perms(d, "/p", &["x3"]), Err(err(Errno::EINVAL)));
    assert_eq!(b.set_perms(d, "/p", &["r"]), Err(err(Errno::EINVAL)));
    assert_eq!(b.set_perms(d, "/p", &[]), Err(err(Errno::EINVAL)));
    assert_eq!(b.set_perms(d, "/missing", &["n0"]), Err(err(Errno::ENOENT)));
    assert_eq!(b.get_perms(d, RELEASE).unwrap(), ["n0"]);
}

const RELEASE: &str = "@releaseDomain";

// ---- permissions ------------------------------------------------------------

#[test]
fn guests_are_confined_to_their_home() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.write(g1, "secret", "s1").unwrap();
    assert_eq!(b.read(g1, "/local/domain/1/secret").unwrap(), "s1");
    // Another guest sees neither the node nor whether it exists.
    assert_eq!(
        b.read(g2, "/local/domain/1/secret"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(
        b.read(g2, "/local/domain/1/nothing"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(b.dir(g2, "/local/domain/1"), Err(err(Errno::EACCES)));
    assert_eq!(
        b.write(g2, "/local/domain/1/secret", "x"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(
        b.write(g2, "/local/domain/1/new", "x"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(b.rm(g2, "/local/domain/1/secret"), Err(err(Errno::EACCES)));
    assert_eq!(
        b.get_perms(g2, "/local/domain/1/secret"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(b.mkdir(g2, "/local/domain/1/d"), Err(err(Errno::EACCES)));
    // Nor anything outside its home, the root included.
    assert_eq!(b.read(g1, "/"), Err(err(Errno::EACCES)));
    assert_eq!(b.write(g1, "/top", "x"), Err(err(Errno::EACCES)));
    assert_eq!(b.dir(g1, "/local/domain"), Err(err(Errno::EACCES)));
    // Its own missing nodes are plainly missing.
    assert_eq!(b.read(g1, "nothing"), Err(err(Errno::ENOENT)));
    // dom0 may do anything.
    assert_eq!(b.read(b.dom0, "/local/domain/1/secret").unwrap(), "s1");
    b.write(b.dom0, "/local/domain/1/secret", "s2").unwrap();
    assert_eq!(b.read(g1, "secret").unwrap(), "s2");
}

#[test]
fn guest_created_nodes_are_owned_by_the_guest() {
    let mut b = Bench::new();
    let g = b.guest(3);
    b.write(g, "a/b", "v").unwrap();
    assert_eq!(b.get_perms(g, "a").unwrap(), ["n3"]);
    assert_eq!(b.get_perms(g, "a/b").unwrap(), ["n3"]);
    // Nodes dom0 creates in the home inherit the home's permissions.
    b.write(b.dom0, "/local/domain/3/fromdom0", "v").unwrap();
    assert_eq!(b.get_perms(g, "fromdom0").unwrap(), ["n3"]);
}

#[test]
fn grants_read_write_and_default() {
    let mut b = Bench::new();
    let (g1, g2, g3) = (b.guest(1), b.guest(2), b.guest(3));
    b.write(g1, "shared", "v").unwrap();
    // Read grant: g2 may read, not write; g3 nothing.
    b.set_perms(g1, "shared", &["n1", "r2"]).unwrap();
    assert_eq!(b.read(g2, "/local/domain/1/shared").unwrap(), "v");
    assert_eq!(
        b.write(g2, "/local/domain/1/shared", "x"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(
        b.read(g3, "/local/domain/1/shared"),
        Err(err(Errno::EACCES))
    );
    // Write-only grant.
    b.set_perms(g1, "shared", &["n1", "w2"]).unwrap();
    assert_eq!(
        b.read(g2, "/local/domain/1/shared"),
        Err(err(Errno::EACCES))
    );
    b.write(g2, "/local/domain/1/shared", "from2").unwrap();
    assert_eq!(b.read(g1, "shared").unwrap(), "from2");
    // A write grant does not make the grantee the owner.
    assert_eq!(
        b.set_perms(g2, "/local/domain/1/shared", &["b1"]),
        Err(err(Errno::EACCES))
    );
    // Default access with an explicit denial.
    b.set_perms(g1, "shared", &["r1", "n3"]).unwrap();
    assert_eq!(b.read(g2, "/local/domain/1/shared").unwrap(), "from2");
    assert_eq!(
        b.read(g3, "/local/domain/1/shared"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(
        b.get_perms(g2, "/local/domain/1/shared").unwrap(),
        ["r1", "n3"]
    );
    // Both.
    b.set_perms(g1, "shared", &["n1", "b3"]).unwrap();
    b.write(g3, "/local/domain/1/shared", "from3").unwrap();
    assert_eq!(b.read(g3, "/local/domain/1/shared").unwrap(), "from3");
}

#[test]
fn granted_subtrees_but_not_their_parents() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.mkdir(g1, "dev").unwrap();
    b.set_perms(g1, "dev", &["n1", "b2"]).unwrap();
    // g2 may create beneath the granted node; the new node belongs to g2
    // and keeps g1's grants.
    b.write(g2, "/local/domain/1/dev/x", "v").unwrap();
    assert_eq!(
        b.get_perms(g2, "/local/domain/1/dev/x").unwrap(),
        ["n2", "b2"]
    );
    // Missing nodes under the grant are ENOENT to g2, elsewhere EACCES.
    assert_eq!(b.read(g2, "/local/domain/1/dev/y"), Err(err(Errno::ENOENT)));
    assert_eq!(b.read(g2, "/local/domain/1/other"), Err(err(Errno::EACCES)));
    // The home itself stays closed.
    assert_eq!(b.dir(g2, "/local/domain/1"), Err(err(Errno::EACCES)));
}

#[test]
fn owners_cannot_give_nodes_away_but_dom0_can() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.write(g1, "n", "v").unwrap();
    assert_eq!(b.set_perms(g1, "n", &["n2"]), Err(err(Errno::EPERM)));
    assert_eq!(
        b.set_perms(g2, "/local/domain/1/n", &["n2"]),
        Err(err(Errno::EACCES))
    );
    b.set_perms(b.dom0, "/local/domain/1/n", &["n2"]).unwrap();
    assert_eq!(b.read(g2, "/local/domain/1/n").unwrap(), "v");
    assert_eq!(b.read(g1, "n"), Err(err(Errno::EACCES)), "g1 gave it away");
}

#[test]
fn rm_needs_write_on_the_node() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.write(g1, "ro", "v").unwrap();
    b.set_perms(g1, "ro", &["n1", "r2"]).unwrap();
    assert_eq!(b.rm(g2, "/local/domain/1/ro"), Err(err(Errno::EACCES)));
    b.set_perms(g1, "ro", &["n1", "w2"]).unwrap();
    b.rm(g2, "/local/domain/1/ro").unwrap();
    assert_eq!(b.read(g1, "ro"), Err(err(Errno::ENOENT)));
}

#[test]
fn privileged_only_requests() {
    let mut b = Bench::new();
    let g = b.guest(1);
    for (ty, payload) in [
        (XS_INTRODUCE, &b"5\x00123\x007\x00"[..]),
        (XS_RELEASE, b"1\0"),
        (XS_IS_DOMAIN_INTRODUCED, b"1\0"),
        (XS_CONTROL, b"check\0"),
        (XS_RESUME, b"1\0"),
        (XS_SET_TARGET, b"1\x002\x00"),
    ] {
        assert_eq!(
            b.req(g, ty, 0, payload),
            Err(err(Errno::EACCES)),
            "type {ty}"
        );
    }
    assert_eq!(b.set_perms(g, RELEASE, &["r1"]), Err(err(Errno::EACCES)));
    assert_eq!(b.get_perms(g, RELEASE), Err(err(Errno::EACCES)));
    assert_eq!(
        b.req(b.dom0, XS_CONTROL, 0, b"check\0"),
        Err(err(Errno::ENOSYS))
    );
}

#[test]
fn relative_paths_resolve_to_home() {
    let mut b = Bench::new();
    let g = b.guest(9);
    b.write(g, "data/x", "1").unwrap();
    assert_eq!(b.read(b.dom0, "/local/domain/9/data/x").unwrap(), "1");
    assert_eq!(b.dir(g, "data").unwrap(), ["x"]);
    // dom0's relative paths live under /local/domain/0.
    b.write(b.dom0, "rel", "2").unwrap();
    assert_eq!(b.read(b.dom0, "/local/domain/0/rel").unwrap(), "2");
    for bad in ["", "a/", "a//b", "a b", "/x/", "@foo"] {
        assert_eq!(b.read(g, bad), Err(err(Errno::EINVAL)), "{bad:?}");
    }
}

#[test]
fn get_domain_path() {
    let mut b = Bench::new();
    let g = b.guest(4);
    assert_eq!(
        b.req(g, XS_GET_DOMAIN_PATH, 0, b"4\0").unwrap(),
        nul("/local/domain/4")
    );
    assert_eq!(
        b.req(g, XS_GET_DOMAIN_PATH, 0, b"65535\0").unwrap(),
        nul("/local/domain/65535")
    );
    for bad in [&b"x\0"[..], b"4", b"70000\0", b"\0"] {
        assert_eq!(
            b.req(g, XS_GET_DOMAIN_PATH, 0, bad),
            Err(err(Errno::EINVAL))
        );
    }
}

// ---- quotas -----------------------------------------------------------------

#[test]
fn guest_quotas() {
    let limits = Limits {
        nodes_per_domain: 5,
        watches_per_domain: 2,
        transactions_per_domain: 1,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits);
    let g = b.guest(1);
    // Node size: 16 + 8 (one permission) + value.
    let big = "v".repeat(2048 - 24);
    b.write(g, "big", &big).unwrap();
    assert_eq!(
        b.write(g, "big", &format!("{big}v")),
        Err(err(Errno::ENOSPC))
    );
    assert_eq!(
        b.write(g, "big2", &format!("{big}v")),
        Err(err(Errno::ENOSPC))
    );
    // Nodes per domain (the home counts: it is owned by the guest).
    b.write(g, "a/b/c", "").unwrap();
    assert_eq!(b.write(g, "x", ""), Err(err(Errno::ENOSPC)));
    assert_eq!(b.xs.store().owned_by(1), 5);
    b.rm(g, "a").unwrap();
    b.write(g, "x", "").unwrap();
    // Permissions per node.
    assert_eq!(
        b.set_perms(g, "x", &["n1", "r2", "r3", "r4", "r5", "r6"]),
        Err(err(Errno::ENOSPC))
    );
    b.set_perms(g, "x", &["n1", "r2", "r3", "r4", "r5"])
        .unwrap();
    // Watches and transactions.
    b.watch(g, "x", "1").unwrap();
    b.watch(g, "x", "2").unwrap();
    assert_eq!(b.watch(g, "x", "3"), Err(err(Errno::E2BIG)));
    b.tx_start(g);
    assert_eq!(
        b.req(g, XS_TRANSACTION_START, 0, b"\0"),
        Err(err(Errno::ENOSPC))
    );
    // Path length past the home prefix.
    let long = "p".repeat(XENSTORE_REL_PATH_MAX + 1);
    assert_eq!(b.read(g, &long), Err(err(Errno::EINVAL)));
    // dom0 is bound by none of these.
    b.write(b.dom0, "/big", &"v".repeat(4000)).unwrap();
}

#[test]
fn transaction_node_quota_fails_the_transaction() {
    let limits = Limits {
        nodes_per_transaction: 4,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits);
    let g = b.guest(1);
    let tx = b.tx_start(g);
    b.write_tx(g, tx, "a", "").unwrap();
    assert_eq!(b.write_tx(g, tx, "b/c/d", ""), Err(err(Errno::ENOSPC)));
    assert_eq!(b.tx_end(g, tx, true), Err(err(Errno::ENOSPC)));
    assert_eq!(b.read(g, "a"), Err(err(Errno::ENOENT)));
}

// ---- watches ----------------------------------------------------------------

#[test]
fn watch_fires_initially_and_on_changes_beneath() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.watch(d, "/w", "tok").unwrap();
    assert_eq!(b.events(d), [ev("/w", "tok")], "initial event");
    b.write(d, "/w/a/b", "1").unwrap();
    b.write(d, "/w", "2").unwrap();
    b.write(d, "/wx", "3").unwrap();
    b.write(d, "/other", "4").unwrap();
    assert_eq!(b.events(d), [ev("/w/a/b", "tok"), ev("/w", "tok")]);
    b.mkdir(d, "/w/m").unwrap();
    b.mkdir(d, "/w/m").unwrap();
    assert_eq!(
        b.events(d),
        [ev("/w/m", "tok")],
        "no event for an existing node"
    );
    // A watch on an ancestor sees changes below.
    b.watch(d, "/", "root").unwrap();
    b.events(d);
    b.write(d, "/w/z", "").unwrap();
    assert_eq!(b.events(d), [ev("/w/z", "tok"), ev("/w/z", "root")]);
}

#[test]
fn watch_fires_on_rm_for_every_removed_watched_node() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/t/a/b", "").unwrap();
    b.write(d, "/t/c", "").unwrap();
    b.watch(d, "/t", "top").unwrap();
    b.watch(d, "/t/a/b", "deep").unwrap();
    b.watch(d, "/t/a/b/never", "never").unwrap();
    b.events(d);
    b.rm(d, "/t/a").unwrap();
    let got = b.events(d);
    assert!(got.contains(&ev("/t/a", "top")));
    assert!(
        got.contains(&ev("/t/a/b", "deep")),
        "removal of a parent reaches the watched node"
    );
    assert!(
        !got.iter().any(|(_, t)| t == "never"),
        "nothing fires for a node that never existed"
    );
    // Exact events for descendants do not reach watches on ancestors twice.
    assert_eq!(got.iter().filter(|(_, t)| t == "top").count(), 1);
}

#[test]
fn watch_fires_on_set_perms_even_for_the_excluded() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.write(g1, "n", "v").unwrap();
    b.set_perms(g1, "n", &["n1", "r2"]).unwrap();
    b.watch(g2, "/local/domain/1/n", "t").unwrap();
    assert_eq!(b.events(g2).len(), 1);
    // g2 loses its read grant but hears about the change that took it.
    b.set_perms(g1, "n", &["n1"]).unwrap();
    assert_eq!(b.events(g2), [ev("/local/domain/1/n", "t")]);
    // From then on it hears nothing.
    b.write(g1, "n", "w").unwrap();
    assert_eq!(b.events(g2), []);
}

#[test]
fn watches_respect_read_permission() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.watch(g2, "/local/domain/1", "spy").unwrap();
    b.watch(g2, "/", "all").unwrap();
    b.events(g2);
    b.write(g1, "private", "x").unwrap();
    b.rm(g1, "private").unwrap();
    assert_eq!(b.events(g2), [], "no events about unreadable nodes");
    // Readable parent: the child's event is delivered.
    b.mkdir(g1, "pub").unwrap();
    b.set_perms(g1, "pub", &["n1", "r2"]).unwrap();
    b.events(g2);
    b.write(g1, "pub/k", "x").unwrap();
    assert_eq!(
        b.events(g2),
        [
            ev("/local/domain/1/pub/k", "spy"),
            ev("/local/domain/1/pub/k", "all")
        ]
    );
}

#[test]
fn relative_watches_report_relative_paths() {
    let mut b = Bench::new();
    let g = b.guest(5);
    b.watch(g, "device", "d").unwrap();
    assert_eq!(b.events(g), [ev("device", "d")]);
    b.write(g, "device/vif/0/state", "1").unwrap();
    assert_eq!(b.events(g), [ev("device/vif/0/state", "d")]);
    b.write(b.dom0, "/local/domain/5/device", "").unwrap();
    assert_eq!(b.events(g), [ev("device", "d")]);
}

#[test]
fn unwatch_and_duplicates() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.watch(d, "/u", "a").unwrap();
    assert_eq!(b.watch(d, "/u", "a"), Err(err(Errno::EEXIST)));
    b.watch(d, "/u", "b").unwrap();
    b.events(d);
    b.unwatch(d, "/u", "a").unwrap();
    assert_eq!(b.unwatch(d, "/u", "a"), Err(err(Errno::ENOENT)));
    b.write(d, "/u", "").unwrap();
    assert_eq!(b.events(d), [ev("/u", "b")]);
    // Malformed: wrong number of strings.
    assert_eq!(b.req(d, XS_WATCH, 0, b"/u\0"), Err(err(Errno::EINVAL)));
    assert_eq!(
        b.req(d, XS_WATCH, 0, b"/u\0t\0x\0"),
        Err(err(Errno::EINVAL))
    );
    // Watches ignore the transaction id, even an unknown one.
    assert_eq!(b.req(d, XS_WATCH, 77, b"/v\0t\0").unwrap(), b"OK\0");
    // RESET_WATCHES drops them all.
    b.req(d, XS_RESET_WATCHES, 0, b"\0").unwrap();
    b.events(d);
    b.write(d, "/u", "x").unwrap();
    assert_eq!(b.events(d), []);
}

#[test]
fn identical_pending_events_are_merged() {
    let mut b = Bench::new();
    let d = b.dom0;
    let g = b.guest(1);
    b.watch(g, "x", "t").unwrap();
    b.events(g);
    for _ in 0..5 {
        b.write(d, "/local/domain/1/x", "v").unwrap();
    }
    assert_eq!(b.events(g), [ev("x", "t")]);
}

#[test]
fn unread_events_are_bounded_for_guests() {
    let limits = Limits {
        queued_bytes: 200,
        ..Limits::default()
    };
    let mut b = Bench::with_limits(limits);
    let g = b.guest(1);
    b.watch(g, "x", "t").unwrap();
    b.events(g);
    for i in 0..50 {
        b.write(b.dom0, &format!("/local/domain/1/x/{i}"), "")
            .unwrap();
    }
    let queued = b.xs.connection(g).unwrap().queued_bytes();
    assert!(queued <= 200, "{queued}");
    assert!(!b.events(g).is_empty());
}

// ---- transactions ---------------------------------------------------------

#[test]
fn transaction_sees_a_snapshot() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/s/a", "old").unwrap();
    let tx = b.tx_start(d);
    b.write(d, "/s/a", "changed").unwrap();
    b.write(d, "/q", "new").unwrap();
    assert_eq!(b.read_tx(d, tx, "/s/a").unwrap(), "old");
    assert_eq!(b.read_tx(d, tx, "/q"), Err(err(Errno::ENOENT)));
    assert_eq!(b.dir_tx(d, tx, "/").unwrap(), ["s"]);
    // What it saw is out of date: it cannot commit.
    assert_eq!(b.tx_end(d, tx, true), Err(err(Errno::EAGAIN)));
}

#[test]
fn transaction_commits_atomically() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/s/a", "old").unwrap();
    let tx = b.tx_start(d);
    assert_eq!(b.read_tx(d, tx, "/s/a").unwrap(), "old");
    b.write_tx(d, tx, "/s/a", "new").unwrap();
    b.write_tx(d, tx, "/s/b/c", "made").unwrap();
    b.rm_tx(d, tx, "/s/b/c").unwrap();
    b.write_tx(d, tx, "/s/b/d", "made").unwrap();
    assert_eq!(b.read_tx(d, tx, "/s/a").unwrap(), "new");
    assert_eq!(b.dir_tx(d, tx, "/s/b").unwrap(), ["d"]);
    assert_eq!(b.read(d, "/s/a").unwrap(), "old", "invisible until commit");
    assert_eq!(b.read(d, "/s/b/d"), Err(err(Errno::ENOENT)));
    // A change the transaction never looked at does not stop it.
    b.write(d, "/q", "outside").unwrap();
    b.tx_end(d, tx, true).unwrap();
    assert_eq!(b.read(d, "/s/a").unwrap(), "new");
    assert_eq!(b.read(d, "/s/b/d").unwrap(), "made");
    assert_eq!(b.read(d, "/s/b/c"), Err(err(Errno::ENOENT)));
    assert_eq!(b.read(d, "/q").unwrap(), "outside");
    assert_eq!(b.dir(d, "/s").unwrap(), ["a", "b"]);
    assert_eq!(b.dir(d, "/").unwrap(), ["q", "s"]);
    b.xs.store().check().unwrap();
    // The id is gone.
    assert_eq!(b.read_tx(d, tx, "/s/a"), Err(err(Errno::ENOENT)));
}

#[test]
fn abort_discards() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/k", "1").unwrap();
    let tx = b.tx_start(d);
    b.write_tx(d, tx, "/k", "2").unwrap();
    b.rm_tx(d, tx, "/k").unwrap();
    b.tx_end(d, tx, false).unwrap();
    assert_eq!(b.read(d, "/k").unwrap(), "1");
}

#[test]
fn conflicting_write_fails_commit_with_eagain() {
    let mut b = Bench::new();
    let d = b.dom0;
    let g = b.guest(1);
    b.write(g, "a", "1").unwrap();
    let tx = b.tx_start(g);
    assert_eq!(b.read_tx(g, tx, "a").unwrap(), "1");
    b.write_tx(g, tx, "b", "from-tx").unwrap();
    b.write(d, "/local/domain/1/a", "2").unwrap();
    assert_eq!(b.tx_end(g, tx, true), Err(err(Errno::EAGAIN)));
    assert_eq!(b.read(g, "b"), Err(err(Errno::ENOENT)), "nothing applied");
    // Retrying succeeds.
    let tx = b.tx_start(g);
    assert_eq!(b.read_tx(g, tx, "a").unwrap(), "2");
    b.write_tx(g, tx, "b", "from-tx").unwrap();
    b.tx_end(g, tx, true).unwrap();
    assert_eq!(b.read(g, "b").unwrap(), "from-tx");
}

#[test]
fn conflicting_delete_and_written_node_changes() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/c/a", "1").unwrap();
    let tx = b.tx_start(d);
    b.read_tx(d, tx, "/c/a").unwrap();
    b.rm(d, "/c/a").unwrap();
    assert_eq!(b.tx_end(d, tx, true), Err(err(Errno::EAGAIN)));
    // A node written (not read) in the transaction and changed outside.
    b.write(d, "/c/w", "1").unwrap();
    let tx = b.tx_start(d);
    b.write_tx(d, tx, "/c/w", "tx").unwrap();
    b.write(d, "/c/w", "outside").unwrap();
    assert_eq!(b.tx_end(d, tx, true), Err(err(Errno::EAGAIN)));
    assert_eq!(b.read(d, "/c/w").unwrap(), "outside");
    // A child created next to a directory the transaction listed.
    let tx = b.tx_start(d);
    b.dir_tx(d, tx, "/c").unwrap();
    b.write(d, "/c/new", "").unwrap();
    assert_eq!(b.tx_end(d, tx, true), Err(err(Errno::EAGAIN)));
}

#[test]
fn unrelated_changes_do_not_conflict() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/u/a", "1").unwrap();
    b.write(d, "/v/b", "1").unwrap();
    let tx = b.tx_start(d);
    b.read_tx(d, tx, "/u/a").unwrap();
    b.write_tx(d, tx, "/u/a", "2").unwrap();
    b.write(d, "/v/b", "2").unwrap();
    b.write(d, "/v/c", "new").unwrap();
    b.tx_end(d, tx, true).unwrap();
    assert_eq!(b.read(d, "/u/a").unwrap(), "2");
    assert_eq!(b.read(d, "/v/c").unwrap(), "new");
}

#[test]
fn interfering_transactions_first_committer_wins() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.write(b.dom0, "/shared/a", "a0").unwrap();
    b.write(b.dom0, "/shared/b", "b0").unwrap();
    b.set_perms(b.dom0, "/shared/a", &["b0"]).unwrap();
    b.set_perms(b.dom0, "/shared/b", &["b0"]).unwrap();
    let t1 = b.tx_start(g1);
    let t2 = b.tx_start(g2);
    b.read_tx(g1, t1, "/shared/a").unwrap();
    b.read_tx(g2, t2, "/shared/b").unwrap();
    b.write_tx(g1, t1, "/shared/b", "b1").unwrap();
    b.write_tx(g2, t2, "/shared/a", "a2").unwrap();
    b.tx_end(g1, t1, true).unwrap();
    assert_eq!(b.tx_end(g2, t2, true), Err(err(Errno::EAGAIN)));
    assert_eq!(b.read(b.dom0, "/shared/a").unwrap(), "a0");
    assert_eq!(b.read(b.dom0, "/shared/b").unwrap(), "b1");
}

#[test]
fn watches_fire_for_transactions_only_on_commit() {
    let mut b = Bench::new();
    let d = b.dom0;
    let w = b.xs.connect(DomId(0), true);
    b.watch(w, "/t", "w").unwrap();
    b.write(d, "/t/gone/deep", "").unwrap();
    b.events(w);
    // Aborted: nothing.
    let tx = b.tx_start(d);
    b.write_tx(d, tx, "/t/x", "1").unwrap();
    b.tx_end(d, tx, false).unwrap();
    assert_eq!(b.events(w), []);
    // Committed: the changes, once each, after the commit.
    let tx = b.tx_start(d);
    b.write_tx(d, tx, "/t/x", "1").unwrap();
    b.write_tx(d, tx, "/t/x", "2").unwrap();
    b.rm_tx(d, tx, "/t/gone").unwrap();
    assert_eq!(b.events(w), [], "nothing before commit");
    b.tx_end(d, tx, true).unwrap();
    let got = b.events(w);
    assert_eq!(got.iter().filter(|e| *e == &ev("/t/x", "w")).count(), 1);
    assert!(got.contains(&ev("/t/gone", "w")));
    // Failed commit: nothing.
    let tx = b.tx_start(d);
    b.read_tx(d, tx, "/t/x").unwrap();
    b.write_tx(d, tx, "/t/y", "1").unwrap();
    b.write(d, "/t/x", "3").unwrap();
    b.events(w);
    assert_eq!(b.tx_end(d, tx, true), Err(err(Errno::EAGAIN)));
    assert_eq!(b.events(w), []);
}

#[test]
fn transaction_protocol_errors() {
    let mut b = Bench::new();
    let d = b.dom0;
    let tx = b.tx_start(d);
    assert_ne!(tx, 0);
    assert_eq!(
        b.req(d, XS_TRANSACTION_START, tx, b"\0"),
        Err(err(Errno::EBUSY))
    );
    assert_eq!(
        b.req(d, XS_TRANSACTION_START, 999, b"\0"),
        Err(err(Errno::ENOENT))
    );
    assert_eq!(b.req(d, XS_READ, 999, &nul("/")), Err(err(Errno::ENOENT)));
    assert_eq!(
        b.req(d, XS_TRANSACTION_END, tx, b"X\0"),
        Err(err(Errno::EINVAL))
    );
    assert_eq!(
        b.req(d, XS_TRANSACTION_END, tx, b"T"),
        Err(err(Errno::EINVAL))
    );
    assert_eq!(
        b.req(d, XS_TRANSACTION_END, 0, b"T\0"),
        Err(err(Errno::ENOENT))
    );
    // Transaction ids are per connection.
    let other = b.xs.connect(DomId(0), true);
    assert_eq!(b.read_tx(other, tx, "/"), Err(err(Errno::ENOENT)));
    b.tx_end(d, tx, true).unwrap();
    let tx2 = b.tx_start(d);
    assert_ne!(tx2, tx);
}

#[test]
fn transaction_permission_checks_apply() {
    let mut b = Bench::new();
    let (g1, g2) = (b.guest(1), b.guest(2));
    b.write(g1, "s", "v").unwrap();
    let tx = b.tx_start(g2);
    assert_eq!(
        b.read_tx(g2, tx, "/local/domain/1/s"),
        Err(err(Errno::EACCES))
    );
    assert_eq!(
        b.write_tx(g2, tx, "/local/domain/1/s", "x"),
        Err(err(Errno::EACCES))
    );
    b.write_tx(g2, tx, "mine", "x").unwrap();
    b.tx_end(g2, tx, true).unwrap();
    assert_eq!(b.get_perms(g2, "mine").unwrap(), ["n2"]);
}

// ---- domains ----------------------------------------------------------------

#[test]
fn introduce_and_release_over_the_wire() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.watch(d, "@introduceDomain", "i").unwrap();
    b.watch(d, "@releaseDomain", "r").unwrap();
    let g = b.guest(1);
    b.watch(g, "/", "guest-root").unwrap();
    b.events(d);
    b.events(g);

    assert_eq!(
        b.req(d, XS_INTRODUCE, 0, b"7\x004660\x0013\x00").unwrap(),
        b"OK\0"
    );
    let c7 = b.xs.domain_connection(DomId(7)).unwrap();
    assert_eq!(
        b.xs.take_actions(),
        [Action::Introduced {
            domid: DomId(7),
            conn: c7,
            mfn: 4660,
            evtchn: 13
        }]
    );
    assert_eq!(b.events(d), [ev("@introduceDomain", "i")]);
    assert_eq!(b.events(g), [], "guests do not see domain events");
    assert_eq!(
        b.req(d, XS_IS_DOMAIN_INTRODUCED, 0, b"7\0").unwrap(),
        b"T\0"
    );
    assert_eq!(
        b.req(d, XS_IS_DOMAIN_INTRODUCED, 0, b"8\0").unwrap(),
        b"F\0"
    );
    let conn = b.xs.connection(c7).unwrap();
    assert!(!conn.is_privileged());
    assert_eq!(conn.domid(), DomId(7));

    // Re-introduction updates the ring without a new connection or event.
    b.req(d, XS_INTRODUCE, 0, b"7\x004661\x0014\x00").unwrap();
    assert_eq!(
        b.xs.take_actions(),
        [Action::Introduced {
            domid: DomId(7),
            conn: c7,
            mfn: 4661,
            evtchn: 14
        }]
    );
    assert_eq!(b.events(d), []);

    for bad in [
        &b"0\x001\x001\x00"[..],
        b"32752\x001\x001\x00",
        b"x\x001\x001\x00",
        b"7\x00-5\x001\x00",
        b"7\x001\x00",
    ] {
        assert_eq!(
            b.req(d, XS_INTRODUCE, 0, bad),
            Err(err(Errno::EINVAL)),
            "{bad:?}"
        );
    }

    // Release: the connection goes, watchers are told, the transport too.
    b.req(d, XS_RELEASE, 0, b"7\0").unwrap();
    assert_eq!(
        b.xs.take_actions(),
        [Action::Released {
            domid: DomId(7),
            conn: c7
        }]
    );
    assert_eq!(b.events(d), [ev("@releaseDomain", "r")]);
    assert!(b.xs.connection(c7).is_none());
    assert_eq!(
        b.xs.handle(c7, &wire::encode(XS_READ, 1, 0, b"/\0")),
        Err(HandleError::UnknownConnection)
    );
    assert_eq!(b.req(d, XS_RELEASE, 0, b"7\0"), Err(err(Errno::ENOENT)));
    assert_eq!(b.req(d, XS_RELEASE, 0, b"seven\0"), Err(err(Errno::EINVAL)));
}

#[test]
fn special_watches_can_be_granted() {
    let mut b = Bench::new();
    let g = b.guest(2);
    b.watch(g, "@releaseDomain", "r").unwrap();
    b.events(g);
    b.guest(3);
    b.xs.release(DomId(3)).unwrap();
    assert_eq!(b.events(g), [], "not readable by default");
    b.set_perms(b.dom0, "@releaseDomain", &["n0", "r2"])
        .unwrap();
    b.events(g);
    b.guest(4);
    b.xs.release(DomId(4)).unwrap();
    assert_eq!(b.events(g), [ev("@releaseDomain", "r")]);
}

#[test]
fn released_domain_ids_inherit_nothing() {
    let mut b = Bench::new();
    let (g1, _g2) = (b.guest(1), b.guest(2));
    b.write(g1, "mine", "secret").unwrap();
    b.write(b.dom0, "/pub", "x").unwrap();
    b.set_perms(b.dom0, "/pub", &["n0", "r1"]).unwrap();
    b.xs.release(DomId(1)).unwrap();
    // Its nodes now belong to dom0 and its grants are gone.
    assert_eq!(b.get_perms(b.dom0, "/local/domain/1/mine").unwrap(), ["n0"]);
    assert_eq!(b.get_perms(b.dom0, "/pub").unwrap(), ["n0"]);
    // A new domain reusing the id sees nothing of it.
    let again = b.xs.introduce(DomId(1), 1, 1).unwrap();
    assert_eq!(b.read(again, "mine"), Err(err(Errno::EACCES)));
    assert_eq!(b.read(again, "/pub"), Err(err(Errno::EACCES)));
    b.xs.store().check().unwrap();
}

#[test]
fn disconnect_of_an_introduced_domain_releases_it() {
    let mut b = Bench::new();
    let g = b.guest(6);
    assert!(b.xs.disconnect(g));
    assert_eq!(
        b.xs.take_actions(),
        [Action::Released {
            domid: DomId(6),
            conn: g
        }]
    );
    assert!(b.xs.domain_connection(DomId(6)).is_none());
    let local = b.xs.connect(DomId(0), true);
    assert!(b.xs.disconnect(local));
    assert!(!b.xs.disconnect(local));
}

// ---- framing ------------------------------------------------------------------

#[test]
fn unknown_and_reply_only_types_are_enosys() {
    let mut b = Bench::new();
    let d = b.dom0;
    for ty in [
        XS_WATCH_EVENT,
        XS_ERROR,
        XS_RESTRICT,
        23,
        1000,
        XS_INVALID,
        u32::MAX,
    ] {
        assert_eq!(b.req(d, ty, 0, b""), Err(err(Errno::ENOSYS)), "type {ty}");
    }
}

#[test]
fn malformed_arguments_are_einval() {
    let mut b = Bench::new();
    let d = b.dom0;
    for ty in [XS_READ, XS_MKDIR, XS_RM, XS_DIRECTORY, XS_GET_PERMS] {
        for bad in [&b""[..], b"/a", b"/a\0\0", b"/a\0b\0"] {
            assert_eq!(
                b.req(d, ty, 0, bad),
                Err(err(Errno::EINVAL)),
                "type {ty} {bad:?}"
            );
        }
    }
    assert_eq!(b.req(d, XS_WRITE, 0, b"/no-nul"), Err(err(Errno::EINVAL)));
    assert_eq!(b.req(d, XS_SET_PERMS, 0, b"/a\0"), Err(err(Errno::EINVAL)));
}

#[test]
fn broken_framing_ignores_the_connection() {
    let mut b = Bench::new();
    let g = b.guest(1);
    let mut m = wire::encode(XS_READ, 1, 0, b"x\0");
    m.push(0);
    assert_eq!(
        b.xs.handle(g, &m),
        Err(HandleError::Frame(FrameError::LengthMismatch {
            declared: 2,
            actual: 3
        }))
    );
    assert!(b.xs.connection(g).unwrap().is_ignored());
    assert_eq!(
        b.xs.handle(g, &wire::encode(XS_READ, 1, 0, b"x\0")),
        Err(HandleError::Ignored)
    );
    // An over-long header over the stream interface does the same.
    let g2 = b.guest(2);
    let mut h = wire::encode(XS_WRITE, 1, 0, b"");
    h[12..16].copy_from_slice(&5000u32.to_ne_bytes());
    assert_eq!(
        b.xs.receive(g2, &h),
        Err(HandleError::Frame(FrameError::TooLong(5000)))
    );
    assert_eq!(b.xs.receive(g2, b"more"), Err(HandleError::Ignored));
    assert_eq!(b.xs.pop_output(g2), None);
}

#[test]
fn requests_in_ring_sized_pieces() {
    let mut b = Bench::new();
    let g = b.guest(1);
    let value = "z".repeat(1500);
    let mut stream = wire::encode(
        XS_WRITE,
        1,
        0,
        &[nul("big"), value.clone().into_bytes()].concat(),
    );
    stream.extend(wire::encode(XS_READ, 2, 0, &nul("big")));
    stream.extend(wire::encode(XS_DIRECTORY, 3, 0, &nul("")));
    let mut handled = 0;
    for piece in stream.chunks(1024).flat_map(|c| c.chunks(333)) {
        handled += b.xs.receive(g, piece).unwrap();
    }
    assert_eq!(handled, 3);
    let r1 = wire::parse(&b.xs.pop_output(g).unwrap())
        .unwrap()
        .payload
        .to_vec();
    assert_eq!(r1, b"OK\0");
    let m2 = b.xs.pop_output(g).unwrap();
    let r2 = wire::parse(&m2).unwrap();
    assert_eq!((r2.header.type_, r2.header.req_id), (XS_READ, 2));
    assert_eq!(r2.payload, value.as_bytes());
    let m3 = b.xs.pop_output(g).unwrap();
    let r3 = wire::parse(&m3).unwrap();
    assert_eq!(r3.header.type_, XS_ERROR, "empty path");
    assert_eq!(r3.payload, b"EINVAL\0");
}

#[test]
fn output_drains_in_ring_sized_pieces() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/v", &"q".repeat(3000)).unwrap();
    b.xs.handle(d, &wire::encode(XS_READ, 5, 0, &nul("/v")))
        .unwrap();
    b.xs.handle(d, &wire::encode(XS_READ, 6, 0, &nul("/nope")))
        .unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = b.xs.peek_output(d) {
        let n = chunk.len().min(700);
        bytes.extend_from_slice(&chunk[..n]);
        b.xs.advance_output(d, n);
    }
    assert_eq!(b.xs.connection(d).unwrap().queued_bytes(), 0);
    let msgs = wire::Reassembler::new().push_all(&bytes).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(wire::parse(&msgs[0]).unwrap().payload.len(), 3000);
    assert_eq!(wire::parse(&msgs[1]).unwrap().payload, b"ENOENT\0");
}

#[test]
fn oversized_replies_become_e2big() {
    let mut b = Bench::new();
    let d = b.dom0;
    b.write(d, "/v", &"q".repeat(XENSTORE_PAYLOAD_MAX - 3))
        .unwrap();
    assert_eq!(b.read(d, "/v").unwrap().len(), XENSTORE_PAYLOAD_MAX - 3);
    for i in 0..300 {
        b.mkdir(d, &format!("/many/name-number-{i}")).unwrap();
    }
    assert_eq!(b.dir(d, "/many"), Err(err(Errno::E2BIG)));
}

#[test]
fn create_home_makes_a_private_home() {
    let mut b = Bench::new();
    b.xs.create_home(DomId(12)).unwrap();
    assert_eq!(b.get_perms(b.dom0, "/local/domain/12").unwrap(), ["n12"]);
    assert_eq!(b.get_perms(b.dom0, "/local/domain").unwrap(), ["n0"]);
}
