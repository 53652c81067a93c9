use super::*;

fn exp(embedding: Vec<f32>, priority: f32) -> Experience {
    Experience {
        embedding,
        features: vec![1.0],
        label: 0,
        trust: 1.0,
        priority,
        origin: None,
    }
}

fn ids(store: &Store) -> Vec<u64> {
    store.tail(0).map(|(id, _)| id).collect()
}

#[test]
fn priority_key_orders_like_floats() {
    let xs = [-2.0f32, -0.5, -0.0, 0.0, 0.3, 0.9, 1.0, 7.5];
    for w in xs.windows(2) {
        assert!(
            priority_key(w[0]) <= priority_key(w[1]),
            "{} vs {}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn a_label_supersedes_the_pseudo_label_of_its_prediction_in_place() {
    let mut s = Store::new(2, 2, 0);
    let mut ev = Vec::new();
    let guess = |origin| Experience {
        label: 0,
        trust: 0.5,
        priority: 0.5,
        origin: Some(origin),
        ..exp(vec![1.0, 0.0], 0.5)
    };
    let truth = |origin| Experience {
        label: 1,
        trust: 1.0,
        priority: 1.0,
        origin: Some(origin),
        ..exp(vec![1.0, 0.0], 1.0)
    };
    assert_eq!(s.insert(guess(7), &mut ev), Some(1));
    assert_eq!(s.insert(guess(8), &mut ev), Some(2));
    // The label for request 7 takes over id 1: no new experience, no new tick.
    assert_eq!(s.insert(truth(7), &mut ev), Some(1));
    assert_eq!((s.len(), s.clock()), (2, 2));
    let n = s.neighbor(s.slot_of(1).unwrap(), 1.0);
    assert_eq!((n.label, n.trust), (1, 1.0));
    // Its priority moved too: the next eviction takes request 8's guess.
    s.insert(exp(vec![0.0, 1.0], 0.9), &mut ev);
    assert_eq!(ev, vec![2]);
    // A label whose guess was evicted is stored as a new experience, and a second
    // label with a superseded origin is not merged again.
    assert_eq!(s.insert(truth(8), &mut ev), Some(4));
    assert_eq!(s.insert(truth(7), &mut ev), Some(5));
    // Labels are final: only pseudo-labels can be found by origin, and every entry
    // points at a live row of that origin.
    assert!(s.by_origin.is_empty(), "{:?}", s.by_origin);
    s.insert(guess(9), &mut ev);
    for (origin, &slot) in &s.by_origin {
        assert_eq!(s.origins[slot as usize], Some(*origin));
        assert!(s.ticks[slot as usize] >= s.min_tick());
    }
}

#[test]
fn a_label_does_not_take_over_a_forgotten_pseudo_label() {
    // After a drift the floor moves at once, but forgotten rows are freed only by
    // the next expire: a label arriving in between must be stored anew, or the
    // expire would take it down with the row it merged into.
    let mut s = Store::new(2, 10, 0);
    let mut ev = Vec::new();
    let guess = Experience {
        trust: 0.5,
        priority: 0.5,
        origin: Some(7),
        ..exp(vec![1.0, 0.0], 0.5)
    };
    assert_eq!(s.insert(guess, &mut ev), Some(1));
    s.forget_before(s.clock() + 1);
    let truth = Experience {
        label: 1,
        origin: Some(7),
        ..exp(vec![1.0, 0.0], 1.0)
    };
    assert_eq!(s.insert(truth, &mut ev), Some(2));
    s.expire(&mut ev);
    assert_eq!(ev, vec![1]);
    let n = s.neighbor(s.slot_of(2).expect("the label survives"), 1.0);
    assert_eq!(n.label, 1);
}

#[test]
fn eviction_takes_lowest_priority_then_oldest() {
    let mut s = Store::new(2, 3, 0);
    let mut ev = Vec::new();
    s.insert(exp(vec![1.0, 0.0], 0.5), &mut ev); // id 1
    s.insert(exp(vec![1.0, 0.0], 0.2), &mut ev); // id 2
    s.insert(exp(vec![1.0, 0.0], 0.2), &mut ev); // id 3
    assert!(ev.is_empty());
    s.insert(exp(vec![0.0, 1.0], 0.9), &mut ev); // evicts 2: lowest, older of the two
    assert_eq!(ev, vec![2]);
    s.insert(exp(vec![0.0, 1.0], 0.9), &mut ev); // evicts 3
    assert_eq!(ev, vec![2, 3]);
    s.insert(exp(vec![0.0, 1.0], 0.9), &mut ev); // evicts 1 (0.5)
    assert_eq!(ev, vec![2, 3, 1]);
    assert_eq!(ids(&s), vec![4, 5, 6]);
    // The newcomer with the lowest priority is the one dropped.
    s.insert(exp(vec![0.0, 1.0], 0.1), &mut ev);
    assert_eq!(ev, vec![2, 3, 1, 7]);
    assert_eq!(ids(&s), vec![4, 5, 6]);
    // Equal priority: the oldest goes, not the newcomer.
    s.insert(exp(vec![0.0, 1.0], 0.9), &mut ev);
    assert_eq!(ev.last(), Some(&4));
    assert_eq!(s.len(), 3);
}

#[test]
fn capacity_holds_and_slots_are_reused() {
    let mut s = Store::new(4, 10, 0);
    let mut ev = Vec::new();
    for i in 0..1000 {
        s.insert(exp(vec![1.0, i as f32, 0.0, 2.0], (i % 7) as f32), &mut ev);
        assert!(s.len() <= 10);
    }
    assert_eq!(s.len(), 10);
    assert_eq!(s.rows().1.len(), 10, "the matrix never grows past capacity");
    assert_eq!(ev.len(), 990);
    // Rows are unit length.
    for (_, slot) in s.tail(0) {
        assert!((squared_norm(s.row(slot)) - 1.0).abs() < 1e-5);
    }
}

#[test]
fn forgetting_expires_everything_before_the_floor_whatever_max_age_says() {
    let mut s = Store::new(1, 100, 0);
    let mut ev = Vec::new();
    for _ in 0..10 {
        s.insert(exp(vec![1.0], 1.0), &mut ev);
    }
    assert_eq!(s.min_tick(), 1);
    s.forget_before(8);
    assert_eq!(s.min_tick(), 8, "searches skip ticks 1..8 at once");
    s.forget_before(5);
    assert_eq!(s.min_tick(), 8, "the floor never goes back");
    s.expire(&mut ev);
    assert_eq!(ids(&s), vec![8, 9, 10]);
    assert_eq!(ev, (1..8).collect::<Vec<u64>>());
    s.insert(exp(vec![1.0], 1.0), &mut ev);
    assert_eq!(ids(&s), vec![8, 9, 10, 11], "new experiences are kept");
}

#[test]
fn expiry_drops_rows_older_than_max_age() {
    let mut s = Store::new(1, 100, 3);
    let mut ev = Vec::new();
    for _ in 0..10 {
        s.insert(exp(vec![1.0], 1.0), &mut ev);
        s.expire(&mut ev);
    }
    // Clock 10, max_age 3: ticks 7..=10 (ages 3..=0) remain.
    assert_eq!(ids(&s), vec![7, 8, 9, 10]);
    assert_eq!(s.min_tick(), 7);
    assert_eq!(ev, vec![1, 2, 3, 4, 5, 6]);
    let slot = s.slot_of(7).expect("live");
    assert_eq!(s.neighbor(slot, 1.0).age, 3);
}

#[test]
fn snapshot_round_trips_live_rows_oldest_first() {
    let mut s = Store::new(2, 2, 0);
    let mut ev = Vec::new();
    for p in [0.1, 0.8, 0.5] {
        s.insert(exp(vec![3.0, 4.0], p), &mut ev);
    }
    let snap = s.snapshot();
    assert_eq!(
        snap.iter().map(|e| e.priority).collect::<Vec<_>>(),
        vec![0.8, 0.5]
    );
    assert_eq!(snap[0].embedding, vec![0.6, 0.8]);
    assert_eq!(snap[0].features, vec![1.0]);
}
