//! The backend's score-and-evict ops on random inputs: every eviction removes exactly the
//! lowest-scoring candidates, per kv head, and keeps sinks and the recent window.

use keyformer::backend::{AttentionSpec, Backend};
use keyformer::kv::{CacheShape, Keep, StepScore};
use keyformer::model::config::Positions;
use keyformer::{CpuBackend, backend::cpu::CpuCache};

const HEADS: usize = 6;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;

fn random_rows(rows: usize, state: &mut u64) -> Vec<f32> {
    let width = (HEADS + 2 * KV_HEADS) * HEAD_DIM;
    (0..rows * width)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// (position, score) of every slot of each kv head of layer 0.
fn slots(cache: &CpuCache) -> Vec<Vec<(u32, f32)>> {
    let c = &cache.layers[0];
    (0..KV_HEADS)
        .map(|g| {
            (0..c.len)
                .map(|s| (c.pos[g * c.capacity + s], c.score[g * c.capacity + s]))
                .collect()
        })
        .collect()
}

/// What eviction must keep: sinks, recent, and the best-scoring candidates (earliest on ties).
fn expected_kept(head: &[(u32, f32)], keep: &Keep) -> Vec<u32> {
    let n = head.len();
    let mut candidates: Vec<usize> = (keep.sinks..n - keep.recent).collect();
    candidates.sort_by(|&a, &b| head[a].1.total_cmp(&head[b].1).then(a.cmp(&b)));
    let evicted = &candidates[..n - keep.budget];
    (0..n)
        .filter(|i| !evicted.contains(i))
        .map(|i| head[i].0)
        .collect()
}

fn check(noise: bool, sinks: usize, seed: u64) {
    let backend = CpuBackend;
    let positions = Positions::Alibi {
        slopes: vec![0.5, 0.25, 0.125, 0.0625, 0.03, 0.01],
    };
    let spec = AttentionSpec {
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        scale: 0.35,
        positions: &positions,
        softcap: None,
        window: None,
    };
    let keep = Keep {
        budget: 16,
        sinks,
        recent: 4,
    };
    let shape = CacheShape {
        layers: 1,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        capacity: keep.budget + 1,
    };
    let mut cache = backend.new_cache(&shape).unwrap();
    let mut state = seed;
    let mut out = vec![0.0; 64 * HEADS * HEAD_DIM];
    let score = StepScore {
        noise,
        tau: 1.3,
        seed: 77,
    };

    // Prefill 40 tokens, then 50 decode steps.
    let prompt = 40;
    backend
        .attention(
            &spec,
            &random_rows(prompt, &mut state),
            prompt,
            0,
            &mut cache,
            0,
            Some(&score),
            &mut out,
        )
        .unwrap();
    let mut heads_differ = false;
    for step in 0..=50 {
        let before = slots(&cache);
        let want: Vec<Vec<u32>> = before.iter().map(|h| expected_kept(h, &keep)).collect();
        backend.evict(&mut cache, 0, &keep).unwrap();
        let got = backend.cache_positions(&cache, 0).unwrap();
        assert_eq!(got, want, "step {step}, seed {seed}");
        assert!(
            backend.cache_capacity(&cache, 0) <= keep.budget + 1,
            "memory given back"
        );
        heads_differ |= got[0] != got[1];
        if step < 50 {
            let pos = prompt + step;
            backend
                .attention(
                    &spec,
                    &random_rows(1, &mut state),
                    1,
                    pos,
                    &mut cache,
                    0,
                    Some(&score),
                    &mut out,
                )
                .unwrap();
        }
    }
    assert!(heads_differ, "kv heads chose different tokens");
}

#[test]
fn evicts_the_lowest_scores_with_noise() {
    for seed in 1..4 {
        println!("seed {seed}");
        check(true, 0, seed);
    }
}

#[test]
fn evicts_the_lowest_scores_without_noise_and_with_sinks() {
    for seed in 1..4 {
        println!("seed {seed}");
        check(false, 3, seed);
    }
}

#[test]
fn scores_are_probabilities_summed_over_the_group() {
    // Each query row adds one softmax per query head: after prefill of n rows the scores of a
    // kv head sum to n * (query heads per kv head).
    let backend = CpuBackend;
    let positions = Positions::Learned;
    let spec = AttentionSpec {
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        scale: 0.35,
        positions: &positions,
        softcap: None,
        window: None,
    };
    let shape = CacheShape {
        layers: 1,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        capacity: 30,
    };
    let mut cache = backend.new_cache(&shape).unwrap();
    let mut out = vec![0.0; 30 * HEADS * HEAD_DIM];
    let score = StepScore {
        noise: true,
        tau: 1.7,
        seed: 5,
    };
    backend
        .attention(
            &spec,
            &random_rows(30, &mut 42),
            30,
            0,
            &mut cache,
            0,
            Some(&score),
            &mut out,
        )
        .unwrap();
    for head in slots(&cache) {
        let total: f32 = head.iter().map(|s| s.1).sum();
        assert!(
            (total - 30.0 * (HEADS / KV_HEADS) as f32).abs() < 1e-3,
            "{total}"
        );
    }
}
