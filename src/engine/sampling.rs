//! Turning logits into the next token: greedy, or temperature / top-k / top-p with a seeded
//! generator so a run can be repeated exactly.

use crate::error::{Error, Result};
use crate::model::source::splitmix64;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "temperature {} must be >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "top-p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let state = params.seed;
        Sampler { params, state }
    }

    /// Whether this sampler always takes the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0 || self.params.top_k == 1
    }

    /// A uniform value in [0, 1) from the seeded generator.
    fn uniform(&mut self) -> f64 {
        (splitmix64(&mut self.state) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The parameters of the next non-greedy draw, taking its uniform value from the
    /// generator: what a device needs to sample exactly as `sample` would.
    pub fn draw(&mut self) -> Draw {
        Draw {
            temperature: self.params.temperature,
            top_k: self.params.top_k,
            top_p: self.params.top_p,
            u: self.uniform(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        self.draw().pick(logits)
    }
}

/// One temperature / top-k / top-p draw with its uniform value `u` in [0, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub u: f64,
}

impl Draw {
    /// The token this draw takes from `logits`: the definition device sampling matches.
    pub fn pick(&self, logits: &[f32]) -> u32 {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let max = logits[order[0]] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / self.temperature as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        // Smallest prefix of the sorted tokens whose probability reaches top-p.
        let mut kept = 0;
        let mut mass = 0.0;
        while kept < weights.len() {
            mass += weights[kept] / total;
            kept += 1;
            if mass >= self.top_p as f64 {
                break;
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut target = self.u * kept_total;
        for (i, w) in weights[..kept].iter().enumerate() {
            target -= w;
            if target < 0.0 {
                return order[i] as u32;
            }
        }
        order[kept - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9]), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Probabilities ~0.665, 0.245, 0.09: top-p 0.8 keeps the first two tokens only.
        let logits = [2.0, 1.0, 0.0];
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&logits)).collect();
        assert!(!draws.contains(&2));
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        // Renormalised over the two kept tokens, token 1 has probability e^1 / (e^2 + e^1).
        let expected = 1.0f64.exp() / (2.0f64.exp() + 1.0f64.exp());
        assert!((ones - expected).abs() < 0.04, "{ones} vs {expected}");
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [0.5, 0.4, 0.3, 0.2];
        let params = SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn sample_is_draw_then_pick() {
        let logits = [0.5, 0.4, 0.3, 0.2, 0.2];
        let params = SamplingParams {
            temperature: 0.7,
            top_k: 4,
            top_p: 0.9,
            seed: 3,
        };
        let mut by_sample = Sampler::new(params.clone());
        let mut by_draw = Sampler::new(params);
        for _ in 0..50 {
            let draw = by_draw.draw();
            assert!((0.0..1.0).contains(&draw.u));
            assert_eq!(by_sample.sample(&logits), draw.pick(&logits));
        }
    }

    #[test]
    fn pick_inverts_the_cdf_in_sorted_order() {
        // Equal weights over the two kept tokens; the tie goes to the lower index first.
        let logits = [1.0, 3.0, 3.0, 0.0];
        let draw = |u| Draw {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            u,
        };
        assert_eq!(draw(0.0).pick(&logits), 1);
        assert_eq!(draw(0.49).pick(&logits), 1);
        assert_eq!(draw(0.51).pick(&logits), 2);
        assert_eq!(draw(0.999).pick(&logits), 2);
    }
}
