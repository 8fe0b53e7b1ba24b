//! Property tests: the parser and dispatcher survive any input, reassembly
//! does not depend on how the stream is split, and random operation
//! sequences agree with a plain map model of the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use guest_abi::DomId;
use guest_abi::io::xenstore::*;
use proptest::prelude::*;

use crate::tests::{Bench, nul};
use crate::wire::{self, Reassembler};
use crate::{ConnId, HandleError, Xenstore};

/// Drain `c`'s output and check every message is well framed. Returns the
/// replies' request ids.
fn drain_checked(xs: &mut Xenstore, c: ConnId) -> Vec<u32> {
    let mut ids = Vec::new();
    while let Some(m) = xs.pop_output(c) {
        let msg = wire::parse(&m).expect("output is framed");
        assert!(msg.payload.len() <= XENSTORE_PAYLOAD_MAX);
        if msg.header.type_ == XS_WATCH_EVENT {
            assert_eq!(wire::count_strings(msg.payload), 2);
        } else {
            ids.push(msg.header.req_id);
        }
    }
    ids
}

/// Interesting argument strings for structured fuzzing.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "/",
            "/a",
            "/a/b",
            "/a/b/c",
            "a",
            "a/b",
            "@releaseDomain",
            "@introduceDomain",
            "@x",
            "/local/domain/1",
            "/local/domain/1/x",
            "/local/domain/2/y",
            "",
            "//",
            "/a/",
            "T",
            "F",
            "0",
            "1",
            "2",
            "7",
            "65535",
            "65536",
            "-1",
            "n0",
            "r1",
            "w2",
            "b1",
            "x9",
            "OK",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
        (1usize..5000).prop_map(|n| vec![b'a'; n]),
    ]
}

/// A request: type, tx id and NUL-separated fragments (maybe unterminated).
fn request() -> impl Strategy<Value = (u32, u32, Vec<u8>)> {
    (
        prop_oneof![0u32..=24, any::<u32>()],
        prop_oneof![Just(0u32), 1u32..4, any::<u32>()],
        prop::collection::vec(fragment(), 0..5),
        any::<bool>(),
    )
        .prop_map(|(ty, tx, parts, terminated)| {
            let mut payload = parts.join(&0u8);
            if terminated {
                payload.push(0);
            }
            payload.truncate(XENSTORE_PAYLOAD_MAX);
            (ty, tx, payload)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz::cases(256)))]

    /// Arbitrary bytes as whole messages and as a stream: never a panic, the
    /// store stays consistent, output stays well framed.
    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
        priv_sender in any::<bool>(),
    ) {
        let mut b = Bench::new();
        let g = b.guest(1);
        let sender = if priv_sender { b.dom0 } else { g };
        for c in &chunks {
            let _ = b.xs.handle(sender, c);
            let fresh = b.xs.connect(DomId(3), false);
            let _ = b.xs.receive(fresh, c);
            drain_checked(&mut b.xs, fresh);
        }
        let stream = b.xs.connect(DomId(4), false);
        for c in &chunks {
            match b.xs.receive(stream, c) {
                Ok(_) | Err(HandleError::Frame(_)) | Err(HandleError::Ignored) => {}
                Err(e) => prop_assert!(false, "{e:?}"),
            }
        }
        drain_checked(&mut b.xs, sender);
        drain_checked(&mut b.xs, stream);
        prop_assert!(b.xs.store().check().is_ok());
    }

    /// Plausible but hostile requests from privileged and unprivileged
    /// senders: each gets exactly one reply echoing its id.
    #[test]
    fn structured_requests_never_panic(
        reqs in prop::collection::vec((0usize..3, request()), 1..40),
    ) {
        let mut b = Bench::new();
        let g1 = b.guest(1);
        let g2 = b.guest(2);
        let senders = [b.dom0, g1, g2];
        for (i, (who, (ty, tx, payload))) in reqs.iter().enumerate() {
            let c = senders[*who];
            let req_id = i as u32 + 1;
            match b.xs.handle(c, &wire::encode(*ty, req_id, *tx, payload)) {
                Ok(()) => {
                    let ids = drain_checked(&mut b.xs, c);
                    prop_assert_eq!(ids, vec![req_id]);
                }
                // dom0 may have released the sender's domain.
                Err(HandleError::UnknownConnection) => prop_assert!(c != b.dom0),
                Err(e) => prop_assert!(false, "{e:?}"),
            }
            for other in senders {
                drain_checked(&mut b.xs, other);
            }
            for other in b.xs.connections().map(|c| c.id()).collect::<Vec<_>>() {
                drain_checked(&mut b.xs, other);
            }
            prop_assert!(b.xs.store().check().is_ok());
        }
        b.xs.take_actions();
    }

    /// Splitting the request stream differently yields the same messages.
    #[test]
    fn reassembly_is_split_invariant(
        msgs in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..300)), 0..8),
        cuts in prop::collection::vec(1usize..200, 1..64),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(t, p)| wire::encode(*t, 1, 0, p)).collect();
        let whole = Reassembler::new().push_all(&stream).unwrap();
        prop_assert_eq!(whole.len(), msgs.len());
        let mut r = Reassembler::new();
        let mut pieces = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            pieces.extend(r.push_all(&rest[..n]).unwrap());
            rest = &rest[n..];
        }
        prop_assert_eq!(pieces, whole);
    }
}

// ---- model check --------------------------------------------------------------

/// An operation on the model tree. Paths are relative to the test root.
#[derive(Clone, Debug)]
enum Op {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    Read(String),
    Dir(String),
}

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..4).prop_map(|v| v.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (rel_path(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(p, v)| Op::Write(p, v)),
        1 => rel_path().prop_map(Op::Mkdir),
        2 => rel_path().prop_map(Op::Rm),
        2 => rel_path().prop_map(Op::Read),
        1 => rel_path().prop_map(Op::Dir),
    ]
}

/// A step: one operation, or a batch run in a transaction then committed or
/// aborted.
#[derive(Clone, Debug)]
enum Step {
    Plain(Op),
    Tx(Vec<Op>, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => op().prop_map(Step::Plain),
        1 => (prop::collection::vec(op(), 0..6), any::<bool>()).prop_map(|(o, c)| Step::Tx(o, c)),
    ]
}

/// The model: existing paths (relative to the test root, "" being the root
/// itself) and their values.
type Model = BTreeMap<String, Vec<u8>>;

fn parent_of(p: &str) -> Option<&str> {
    if p.is_empty() {
        None
    } else {
        Some(p.rfind('/').map_or("", |i| &p[..i]))
    }
}

fn ensure(m: &mut Model, p: &str) -> bool {
    if m.contains_key(p) {
        return false;
    }
    if let Some(parent) = parent_of(p) {
        ensure(m, parent);
    }
    m.insert(p.to_string(), Vec::new());
    true
}

fn under(p: &str, root: &str) -> bool {
    root.is_empty() || p == root || p.starts_with(&format!("{root}/"))
}

/// What the model says an operation returns (reply or error name), and the
/// path a watch on the test root must hear about.
fn model_apply(m: &mut Model, op: &Op) -> (Result<Vec<u8>, String>, Option<String>) {
    let enoent = || Err("ENOENT".to_string());
    match op {
        Op::Write(p, v) => {
            ensure(m, p);
            m.insert(p.clone(), v.clone());
            (Ok(b"OK\0".to_vec()), Some(p.clone()))
        }
        Op::Mkdir(p) => {
            let created = ensure(m, p);
            (Ok(b"OK\0".to_vec()), created.then(|| p.clone()))
        }
        Op::Rm(p) if p.is_empty() => {
            // Removing the test root itself is allowed (it is not "/").
            let existed = m.contains_key(p);
            m.retain(|k, _| !under(k, p));
            (Ok(b"OK\0".to_vec()), existed.then(String::new))
        }
        Op::Rm(p) => {
            if m.contains_key(p) {
                m.retain(|k, _| !under(k, p));
                (Ok(b"OK\0".to_vec()), Some(p.clone()))
            } else if parent_of(p).is_some_and(|q| m.contains_key(q)) {
                (Ok(b"OK\0".to_vec()), None)
            } else {
                (enoent(), None)
            }
        }
        Op::Read(p) => (m.get(p).cloned().ok_or_else(|| "ENOENT".to_string()), None),
        Op::Dir(p) => {
            if !m.contains_key(p) {
                return (enoent(), None);
            }
            let prefix = if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            };
            let names: BTreeSet<&str> = m
                .keys()
                .filter_map(|k| k.strip_prefix(prefix.as_str()))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .collect();
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
            (Ok(out), None)
        }
    }
}

/// The wire request for `op`, with `base` prefixed to its path.
fn op_request(op: &Op, base: &str) -> (u32, Vec<u8>) {
    let full = |p: &str| {
        if p.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{p}")
        }
    };
    match op {
        Op::Write(p, v) => (XS_WRITE, [nul(&full(p)), v.clone()].concat()),
        Op::Mkdir(p) => (XS_MKDIR, nul(&full(p))),
        Op::Rm(p) => (XS_RM, nul(&full(p))),
        Op::Read(p) => (XS_READ, nul(&full(p))),
        Op::Dir(p) => (XS_DIRECTORY, nul(&full(p))),
    }
}

struct Runner {
    b: Bench,
    actor: ConnId,
    watcher: ConnId,
    base: String,
    /// How the watcher's events spell the test root.
    shown_base: String,
}

impl Runner {
    /// Drive the store as dom0 with absolute paths, or as a guest with
    /// paths relative to its home, watching the test root from a second
    /// connection of the same domain.
    fn new(as_guest: bool) -> Self {
        let mut b = Bench::new();
        let (actor, watcher, base, shown_base) = if as_guest {
            let g = b.guest(1);
            // A second unprivileged client of domain 1 (e.g. its user space).
            let w = b.xs.connect(DomId(1), false);
            (g, w, "t".to_string(), "t".to_string())
        } else {
            let w = b.xs.connect(DomId(0), true);
            (b.dom0, w, "/t".to_string(), "/t".to_string())
        };
        b.mkdir(actor, &base).unwrap();
        b.watch(watcher, &base, "tok").unwrap();
        b.events(watcher);
        Self {
            b,
            actor,
            watcher,
            base,
            shown_base,
        }
    }

    fn send(&mut self, op: &Op, tx: u32) -> Result<Vec<u8>, String> {
        let (ty, payload) = op_request(op, &self.base);
        self.b.req(self.actor, ty, tx, &payload)
    }

    fn shown(&self, p: &str) -> String {
        if p.is_empty() {
            self.shown_base.clone()
        } else {
            format!("{}/{p}", self.shown_base)
        }
    }

    fn watcher_events(&mut self) -> Vec<String> {
        self.b
            .events(self.watcher)
            .into_iter()
            .map(|(p, t)| {
                assert_eq!(t, "tok");
                p
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random operation sequences, plain and in transactions, agree with the
    /// model on every reply, on the resulting tree and on watch events.
    #[test]
    fn operations_agree_with_a_model(
        as_guest in any::<bool>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut r = Runner::new(as_guest);
        let mut model = Model::new();
        model.insert(String::new(), Vec::new());
        for s in &steps {
            match s {
                Step::Plain(op) => {
                    let (want, event) = model_apply(&mut model, op);
                    let got = r.send(op, 0);
                    prop_assert_eq!(&got, &want, "{:?}", op);
                    let want_events: Vec<String> = event.iter().map(|p| r.shown(p)).collect();
                    prop_assert_eq!(r.watcher_events(), want_events, "{:?}", op);
                }
                Step::Tx(ops, commit) => {
                    let tx = r.b.tx_start(r.actor);
                    let mut copy = model.clone();
                    let mut changed = BTreeSet::new();
                    for op in ops {
                        let (want, event) = model_apply(&mut copy, op);
                        prop_assert_eq!(r.send(op, tx), want, "{:?} in tx", op);
                        changed.extend(event);
                    }
                    prop_assert_eq!(r.watcher_events(), Vec::<String>::new(), "no events inside");
                    r.b.tx_end(r.actor, tx, *commit).unwrap();
                    let got: BTreeSet<String> = r.watcher_events().into_iter().collect();
                    if *commit {
                        // Every change to a node that existed before or
                        // exists after is announced (one created and removed
                        // inside the transaction leaves nothing to see).
                        let want: BTreeSet<String> = changed
                            .iter()
                            .filter(|p| model.contains_key(*p) || copy.contains_key(*p))
                            .map(|p| r.shown(p))
                            .collect();
                        model = copy;
                        prop_assert!(want.is_subset(&got), "{:?} ⊄ {:?}", want, got);
                    } else {
                        prop_assert!(got.is_empty());
                    }
                }
            }
        }
        // Final state: every model path reads back, and nothing else exists.
        for (p, v) in model.clone() {
            let got = r.send(&Op::Read(p.clone()), 0);
            prop_assert_eq!(got, Ok(v));
        }
        let store = r.b.xs.store();
        prop_assert!(store.check().is_ok());
        let abs_base = if as_guest { "/local/domain/1/t" } else { "/t" };
        let actual: BTreeSet<String> = store
            .paths()
            .filter(|p| *p == abs_base || p.starts_with(&format!("{abs_base}/")))
            .map(|p| p[abs_base.len()..].trim_start_matches('/').to_string())
            .collect();
        let expected: BTreeSet<String> = model.keys().cloned().collect();
        prop_assert_eq!(actual, expected);
    }
}
