use super::*;
use proptest::prelude::*;

const TICK: u64 = 1_000_000;

/// CPU-bound vCPUs (each its own domain) on `cpus` CPUs, scheduled tick by
/// tick with the policy's functions the way the hypervisor's `sched` calls
/// them: the run queues, placement, picks, migrations, caps.
struct Sim {
    vr: Vec<u64>,
    mul: Vec<u64>,
    slice: Vec<u64>,
    cap: Vec<u16>,
    used: Vec<u64>,
    /// Bit c: may run on CPU c.
    affinity: Vec<u64>,
    processor: Vec<usize>,
    queue: Vec<u64>,
    /// The vCPU each CPU holds.
    running: Vec<Option<usize>>,
    ran: Vec<u64>,
    /// Ticks each vCPU ran on each CPU.
    ran_on: Vec<Vec<u64>>,
    migrations: u64,
    period_start: u64,
}

impl Vcpus for Sim {
    fn vruntime(&self, i: usize) -> u64 {
        self.vr[i]
    }
    fn slice(&self, i: usize) -> u64 {
        self.slice[i]
    }
    fn capped(&self, i: usize) -> bool {
        over_cap(self.used[i], self.cap[i])
    }
}

impl Sim {
    /// `vcpus`: (weight, cap, affinity mask).
    fn new(cpus: usize, vcpus: &[(u16, u16, u64)]) -> Sim {
        let n = vcpus.len();
        let mut s = Sim {
            vr: vec![0; n],
            mul: vcpus.iter().map(|v| vruntime_mul(v.0)).collect(),
            slice: vcpus.iter().map(|v| slice_vruntime(v.0)).collect(),
            cap: vcpus.iter().map(|v| v.1).collect(),
            used: vec![0; n],
            affinity: vcpus.iter().map(|v| v.2 & ((1u64 << cpus) - 1)).collect(),
            processor: vec![0; n],
            queue: vec![0; cpus],
            running: vec![None; cpus],
            ran: vec![0; n],
            ran_on: vec![vec![0; cpus]; n],
            migrations: 0,
            period_start: 0,
        };
        // Every vCPU becomes runnable at build: spread over the queues.
        for i in 0..n {
            let q = s.queue.clone();
            let c = place(usize::MAX, s.affinity[i], |c| q[c].count_ones());
            s.processor[i] = c;
            s.queue[c] |= 1 << i;
        }
        s
    }

    fn runnable(&self) -> u64 {
        self.queue.iter().fold(0, |m, q| m | q)
    }

    /// One tick on every CPU in turn (as they would take the lock).
    fn tick(&mut self, now: u64) {
        for c in 0..self.queue.len() {
            if let Some(cur) = self.running[c] {
                self.vr[cur] += charge(TICK, self.mul[cur]);
                self.used[cur] += TICK;
                self.ran[cur] += 1;
                self.ran_on[cur][c] += 1;
            }
            if period_over(self.period_start, now) {
                for i in 0..self.used.len() {
                    self.used[i] = carry_over(self.used[i], self.cap[i]);
                }
                self.period_start = now;
            }
            let held = (0..self.running.len())
                .filter(|&o| o != c)
                .filter_map(|o| self.running[o])
                .fold(0u64, |m, i| m | 1 << i);
            let allowed_here = (0..self.vr.len())
                .filter(|&i| self.affinity[i] & (1 << c) != 0)
                .fold(0u64, |m, i| m | 1 << i);
            let cur = self.running[c];
            let exclude = cur.map_or(0, |i| 1u64 << i);
            let masks = PickMasks {
                queue: self.queue[c],
                runnable: self.runnable(),
                free: !held & allowed_here & !exclude,
                current: cur.unwrap_or(usize::MAX),
                n: self.vr.len(),
            };
            let other = pick(self, masks);
            let still = cur.filter(|&i| !self.capped(i));
            let next = match (other, still) {
                (Some(o), Some(k)) if keeps_cpu(self, k, o) => Some(k),
                (Some(o), _) => Some(o),
                (None, k) => k,
            };
            if let Some(n) = next
                && self.processor[n] != c
            {
                assert!(held & (1 << n) == 0, "took a vCPU another CPU holds");
                let b = 1u64 << n;
                self.queue[self.processor[n]] &= !b;
                self.queue[c] |= b;
                self.processor[n] = c;
                self.migrations += 1;
            }
            if let Some(n) = next {
                assert!(self.affinity[n] & (1 << c) != 0, "vCPU {n} ran on CPU {c}");
            }
            self.running[c] = next;
        }
    }

    /// Runs `ms` ticks; returns each vCPU's share of one CPU over the last
    /// `ms - warm` of them, in per mille.
    fn run(&mut self, warm: u64, ms: u64) -> Vec<u64> {
        for t in 0..warm {
            self.tick(t * TICK);
        }
        let before = self.ran.clone();
        for t in warm..ms {
            self.tick(t * TICK);
        }
        (0..self.ran.len())
            .map(|i| (self.ran[i] - before[i]) * 1000 / (ms - warm))
            .collect()
    }
}

const ANY: u64 = u64::MAX;

fn close(got: &[u64], want: &[u64], tol: u64) -> bool {
    got.iter().zip(want).all(|(g, w)| g.abs_diff(*w) <= tol)
}

#[test]
fn weights_hold_across_two_cpus_only_by_migrating() {
    let mut s = Sim::new(
        2,
        &[(512, 0, ANY), (256, 0, ANY), (256, 0, ANY), (256, 0, ANY)],
    );
    let shares = s.run(500, 10_500);
    assert!(close(&shares, &[800, 400, 400, 400], 10), "{shares:?}");
    assert!(s.migrations > 0);
}

#[test]
fn three_equal_vcpus_share_two_cpus_evenly() {
    let mut s = Sim::new(2, &[(256, 0, ANY); 3]);
    let shares = s.run(500, 10_500);
    assert!(close(&shares, &[667, 667, 667], 10), "{shares:?}");
}

#[test]
fn caps_hold_across_two_cpus() {
    let mut s = Sim::new(2, &[(256, 25, ANY), (256, 0, ANY), (256, 0, ANY)]);
    let shares = s.run(500, 10_500);
    assert!(shares[0] <= 250 + 10, "{shares:?}");
    assert!(shares[1] >= 875 - 10 && shares[2] >= 875 - 10, "{shares:?}");
}

#[test]
fn a_vcpu_per_cpu_never_migrates() {
    let mut s = Sim::new(2, &[(256, 0, ANY), (512, 0, ANY)]);
    let shares = s.run(0, 5_000);
    assert_eq!(s.migrations, 0);
    assert!(close(&shares, &[1000, 1000], 1), "{shares:?}");
}

#[test]
fn affinity_is_kept_and_the_free_vcpu_gets_the_other_cpu() {
    // Two pinned to CPU 0, one free: the free one has CPU 1 to itself.
    let mut s = Sim::new(2, &[(256, 0, 1), (256, 0, 1), (256, 0, ANY)]);
    let shares = s.run(100, 5_100);
    assert!(close(&shares, &[500, 500, 1000], 5), "{shares:?}");
    assert_eq!(s.ran_on[0][1] + s.ran_on[1][1], 0);
}

#[test]
fn one_cpu_is_the_plain_weighted_fair_share() {
    let mut s = Sim::new(1, &[(512, 0, ANY), (256, 0, ANY)]);
    let shares = s.run(100, 9_100);
    assert!(close(&shares, &[667, 333], 5), "{shares:?}");
    assert_eq!(s.migrations, 0);
}

#[test]
fn place_keeps_the_last_cpu_else_the_shortest_allowed_queue() {
    let q = |lens: [u32; 4]| move |c: usize| lens[c];
    // Allowed on its last CPU: stays, however long that queue.
    assert_eq!(place(2, 0b1111, q([0, 0, 5, 0])), 2);
    // Not allowed there: the shortest allowed queue, the lowest on a tie.
    assert_eq!(place(0, 0b1110, q([0, 3, 1, 1])), 2);
    assert_eq!(place(9, 0b1111, q([2, 1, 1, 3])), 1);
    // Nothing allowed: where it was.
    assert_eq!(place(5, 0, q([0; 4])), 5);
}

#[test]
fn first_to_run_is_the_first_allowed_else_none() {
    let on0 = |mask: u64| move |i: usize| mask & (1 << i) != 0;
    // The first runnable vCPU allowed on the boot CPU, in index order.
    assert_eq!(first_to_run([0, 1, 2], on0(0b111)), Some(0));
    assert_eq!(first_to_run([0, 1, 2], on0(0b110)), Some(1));
    assert_eq!(first_to_run([2, 3], on0(0b1100)), Some(2));
    // Runnable vCPUs none of which may run on it: none (it idles), never
    // one outside its affinity.
    assert_eq!(first_to_run([0, 1], on0(0b100)), None);
    assert_eq!(first_to_run([], on0(0b1)), None);
}

struct Fixed(Vec<(u64, u64, bool)>);
impl Vcpus for Fixed {
    fn vruntime(&self, i: usize) -> u64 {
        self.0[i].0
    }
    fn slice(&self, i: usize) -> u64 {
        self.0[i].1
    }
    fn capped(&self, i: usize) -> bool {
        self.0[i].2
    }
}

#[test]
fn pick_takes_from_another_queue_only_past_a_slice_or_when_idle() {
    let v = Fixed(vec![
        (100, 10, false),
        (95, 10, false),
        (80, 10, false),
        (0, 10, true),
    ]);
    let m = |queue, free| PickMasks {
        queue,
        runnable: 0b1111,
        free,
        current: 0,
        n: 4,
    };
    // Own queue {0}, others' waiting {1}: 95 + 10 >= 100, stays local.
    assert_eq!(pick(&v, m(0b0001, 0b0011)), Some(0));
    // Others' {2}: 80 + 10 < 100, migrates.
    assert_eq!(pick(&v, m(0b0001, 0b0101)), Some(2));
    // Own queue empty (or only capped ones): steals.
    assert_eq!(pick(&v, m(0b1000, 0b1010)), Some(1));
    // Nothing free: none.
    assert_eq!(pick(&v, m(0b0001, 0)), None);
    // A capped vCPU is never picked, even alone.
    assert_eq!(pick(&v, m(0b1000, 0b1000)), None);
}

#[test]
fn pick_among_breaks_ties_after_the_current_one() {
    let v = Fixed(vec![(5, 1, false); 4]);
    assert_eq!(pick_among(&v, 0b1111, 1, 4), Some(2));
    assert_eq!(pick_among(&v, 0b1111, 3, 4), Some(0));
    assert_eq!(pick_among(&v, 0b1011, 1, 4), Some(3));
    // No current vCPU (an index past the table).
    assert_eq!(pick_among(&v, 0b0110, usize::MAX, 4), Some(1));
}

#[test]
fn caps_budget_and_carry_over() {
    assert!(!over_cap(u64::MAX - 1, 0));
    assert!(!over_cap(2_499_999, 25));
    assert!(over_cap(2_500_000, 25));
    assert_eq!(carry_over(3_000_000, 25), 500_000);
    assert_eq!(carry_over(1_000_000, 25), 0);
    assert_eq!(carry_over(9, 0), 0);
    assert!(period_over(0, CAP_PERIOD_NS) && !period_over(1, CAP_PERIOD_NS));
}

#[test]
fn virtual_time_scales_with_weight() {
    assert_eq!(charge(1_000_000, vruntime_mul(256)), 1_000_000);
    assert_eq!(charge(1_000_000, vruntime_mul(512)), 500_000);
    assert_eq!(slice_vruntime(512), MIN_SLICE_NS / 2);
    assert_eq!(vruntime_mul(0), vruntime_mul(1));
    assert_eq!(wake_vruntime(10, Some(1_000), 100), 900);
    assert_eq!(wake_vruntime(950, Some(1_000), 100), 950);
    assert_eq!(wake_vruntime(10, None, 100), 10);
}

/// Each vCPU's share (per mille of one CPU) of `cpus` CPUs divided by
/// weight, none above one whole CPU (water-filling).
fn fair_shares(cpus: u64, weights: &[u16]) -> Vec<u64> {
    let mut share = vec![None; weights.len()];
    let mut capacity = cpus * 1000;
    loop {
        let open: Vec<usize> = (0..weights.len()).filter(|&i| share[i].is_none()).collect();
        let total: u64 = open.iter().map(|&i| u64::from(weights[i])).sum();
        let full: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| capacity * u64::from(weights[i]) >= 1000 * total)
            .collect();
        if full.is_empty() || total == 0 {
            for i in open {
                share[i] = Some(capacity * u64::from(weights[i]) / total.max(1));
            }
            return share.into_iter().map(|s| s.unwrap_or(0)).collect();
        }
        for i in full {
            share[i] = Some(1000);
            capacity -= 1000;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(48)))]

    /// Any weights on any number of CPUs: each vCPU gets its weighted share
    /// of the machine (at most one CPU), within 3%.
    #[test]
    fn weighted_shares_hold_on_any_cpus(
        cpus in 1usize..=4,
        weights in prop::collection::vec(64u16..=1024, 1..=7),
    ) {
        let spec: Vec<(u16, u16, u64)> = weights.iter().map(|&w| (w, 0, ANY)).collect();
        let mut s = Sim::new(cpus, &spec);
        let shares = s.run(1_000, 11_000);
        let want = fair_shares(cpus as u64, &weights);
        prop_assert!(close(&shares, &want, 30), "{cpus} CPUs, weights {weights:?}: {shares:?}, want {want:?}");
    }
}

/// Several words of each set, as `PickWords` gives them.
struct Words {
    queue: VcpuSet,
    runnable: VcpuSet,
    free: VcpuSet,
    current: usize,
    n: usize,
}

impl PickWords for &Words {
    fn words(&self) -> usize {
        self.runnable.words()
    }
    fn word(&self, w: usize) -> (u64, u64, u64) {
        (self.queue.word(w), self.runnable.word(w), self.free.word(w))
    }
    fn current(&self) -> usize {
        self.current
    }
    fn n(&self) -> usize {
        self.n
    }
}

fn set(n: usize, members: &[usize]) -> VcpuSet {
    let mut s = VcpuSet::new();
    s.grow(n).unwrap();
    for &i in members {
        s.insert(i);
    }
    s
}

#[test]
fn vcpu_set_grows_and_ignores_indices_past_it() {
    let mut s = VcpuSet::new();
    s.insert(3);
    assert!(!s.contains(3) && s.is_empty());
    s.grow(130).unwrap();
    assert_eq!(s.words(), 3);
    for i in [0, 63, 64, 129] {
        s.insert(i);
    }
    s.insert(200);
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
    assert_eq!(s.count_without(64), 3);
    assert_eq!(s.count_without(5), 4);
    s.remove(63);
    assert!(!s.contains(63) && s.contains(64) && !s.contains(1000));
    // Growing again keeps what it holds.
    s.grow(1000).unwrap();
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
}

#[test]
fn vcpu_set_first_word_boundary() {
    // Room for exactly the first word: 63 fits, 64 does not.
    let mut s = VcpuSet::new();
    assert_eq!(s.words(), 0);
    s.grow(64).unwrap();
    assert_eq!(s.words(), 1);
    s.insert(63);
    s.insert(64);
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![63]);
    assert_eq!(s.word(1), 0);
    s.grow(65).unwrap();
    assert_eq!(s.words(), 2);
    s.insert(64);
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![63, 64]);
    assert_eq!((s.word(0), s.word(1), s.word(2)), (1 << 63, 1, 0));
    s.remove(63);
    s.remove(64);
    assert!(s.is_empty());
}

#[test]
fn pick_reaches_vcpus_past_the_first_word() {
    // 200 vCPUs; the one furthest behind is index 150.
    let mut vs = vec![(100, 10, false); 200];
    vs[150].0 = 10;
    vs[70].0 = 50;
    let v = Fixed(vs);
    let all: Vec<usize> = (0..200).collect();
    let w = Words {
        queue: set(200, &all),
        runnable: set(200, &all),
        free: set(200, &all),
        current: 0,
        n: 200,
    };
    assert_eq!(pick(&v, &w), Some(150));
    // Only one candidate, far out.
    let w = Words {
        queue: set(200, &[199]),
        runnable: set(200, &[199]),
        free: set(200, &all),
        current: 0,
        n: 200,
    };
    assert_eq!(pick(&v, &w), Some(199));
    // Two candidates, each alone in its word: they are compared (70 is
    // further behind than 199), not taken as the only one.
    let w = Words {
        queue: set(200, &[70, 199]),
        runnable: set(200, &[70, 199]),
        free: set(200, &all),
        current: 0,
        n: 200,
    };
    assert_eq!(pick(&v, &w), Some(70));
    // Own queue {70}; 150 waits in another queue, behind by more than a
    // slice: it migrates. Not free (held elsewhere): 70 stays.
    let w = |free: &[usize]| Words {
        queue: set(200, &[70]),
        runnable: set(200, &[70, 150]),
        free: set(200, free),
        current: 70,
        n: 200,
    };
    assert_eq!(pick(&v, &w(&[70, 150])), Some(150));
    assert_eq!(pick(&v, &w(&[70])), Some(70));
    assert_eq!(pick(&v, &w(&[])), None);
}

/// A mask of up to 64 vCPU indices: random words (mostly several bits) or a
/// few chosen indices (the sparse sets of real runs: one or two runnable).
fn mask() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        prop::collection::vec(0usize..64, 0..=3)
            .prop_map(|ix| ix.iter().fold(0u64, |m, &i| m | 1 << i)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(4000)))]

    /// The one-word fast pick gives the full pick's answer for any sets of
    /// up to 64 vCPUs, any virtual run times (ties included), slices, caps
    /// and current vCPU (64: none).
    #[test]
    fn pick_word_is_pick(
        n in 1usize..=64,
        queue in mask(),
        others in mask(),
        free in mask(),
        all_free in any::<bool>(),
        current in 0usize..=64,
        vcpus in prop::collection::vec((0u64..6, 0u64..4, prop::bool::weighted(0.2)), 64),
    ) {
        let within = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let queue = queue & within;
        let free = if all_free { within } else { free & within };
        let runnable = (queue | others) & within;
        let v = Fixed(vcpus);
        let full = pick(&v, PickMasks { queue, runnable, free, current, n });
        let fast = pick_word(&v, queue, runnable, free, current, n);
        prop_assert_eq!(fast, full, "queue {:#x} runnable {:#x} free {:#x} current {}", queue, runnable, free, current);
    }
}
