//! Timing: batches of operations, repeated, reduced to the median time per operation.

use std::fmt::Display;
use std::time::Instant;

/// How one figure is sampled, on both sides: `warmup` untimed batches, then `samples` timed batches of
/// `ops` operations each. The figure is the median over batches of (batch time / `ops`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) warmup: usize,
    pub(crate) samples: usize,
    pub(crate) ops: usize,
}

impl Plan {
    /// The same plan as arguments for `bench_mp.py`.
    pub(crate) fn python_args(&self) -> Vec<String> {
        vec![
            "--warmup".into(),
            self.warmup.to_string(),
            "--samples".into(),
            self.samples.to_string(),
            "--ops".into(),
            self.ops.to_string(),
        ]
    }

    /// Runs the plan: `batch(ops)` performs `ops` operations. Returns the median seconds per operation,
    /// or the first error.
    pub(crate) fn run<E: Display>(
        &self,
        batch: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<f64, String> {
        let mut per_op = self.samples_of(batch)?;
        median(&mut per_op).ok_or_else(|| "no samples were taken".to_string())
    }

    /// [`run`](Self::run), reduced to the slowest batch instead of the median: for figures whose
    /// point is that no batch is slow.
    pub(crate) fn run_slowest<E: Display>(
        &self,
        batch: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<f64, String> {
        let per_op = self.samples_of(batch)?;
        slowest(&per_op).ok_or_else(|| "no samples were taken".to_string())
    }

    /// Seconds per operation of each timed batch.
    fn samples_of<E: Display>(
        &self,
        mut batch: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<Vec<f64>, String> {
        for _ in 0..self.warmup {
            batch(self.ops).map_err(|e| e.to_string())?;
        }
        let mut per_op = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            let start = Instant::now();
            batch(self.ops).map_err(|e| e.to_string())?;
            per_op.push(start.elapsed().as_secs_f64() / self.ops as f64);
        }
        Ok(per_op)
    }
}

impl Plan {
    /// Runs two figures with this plan, alternating their batches (a, b, a, b, ...), so that both see
    /// the same machine state (CPU frequency, placement, noisy neighbours): their ratio is then much
    /// steadier than that of two figures measured one after the other. A figure that fails stops;
    /// the other goes on.
    pub(crate) fn run_alternating<E: Display, F: Display>(
        &self,
        mut a: impl FnMut(usize) -> Result<(), E>,
        mut b: impl FnMut(usize) -> Result<(), F>,
    ) -> (Result<f64, String>, Result<f64, String>) {
        let mut ta = Timed::default();
        let mut tb = Timed::default();
        for i in 0..self.warmup + self.samples {
            let timed = i >= self.warmup;
            ta.batch(self.ops, timed, &mut a);
            tb.batch(self.ops, timed, &mut b);
        }
        (ta.finish(), tb.finish())
    }
}

impl Plan {
    /// [`Plan::run_alternating`] for any number of figures: batch `i` of every figure runs, in order,
    /// before batch `i + 1` of any. Returns one result per figure, in order.
    pub(crate) fn run_interleaved(
        &self,
        figures: &mut [&mut dyn FnMut(usize) -> Result<(), String>],
    ) -> Vec<Result<f64, String>> {
        let mut timed: Vec<Timed> = figures.iter().map(|_| Timed::default()).collect();
        for i in 0..self.warmup + self.samples {
            let is_timed = i >= self.warmup;
            for (f, t) in figures.iter_mut().zip(&mut timed) {
                t.batch(self.ops, is_timed, f);
            }
        }
        timed.into_iter().map(Timed::finish).collect()
    }
}

/// The samples of one figure of [`Plan::run_alternating`] or [`Plan::run_interleaved`], or its error.
#[derive(Debug, Default)]
struct Timed {
    per_op: Vec<f64>,
    error: Option<String>,
}

impl Timed {
    fn batch<E: Display>(
        &mut self,
        ops: usize,
        timed: bool,
        f: &mut impl FnMut(usize) -> Result<(), E>,
    ) {
        if self.error.is_some() {
            return;
        }
        let start = Instant::now();
        match f(ops) {
            Ok(()) if timed => self.per_op.push(start.elapsed().as_secs_f64() / ops as f64),
            Ok(()) => {}
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn finish(mut self) -> Result<f64, String> {
        match self.error {
            Some(e) => Err(e),
            None => median(&mut self.per_op).ok_or_else(|| "no samples were taken".to_string()),
        }
    }
}

/// The median of `samples` (the mean of the middle two for an even count); `None` when empty.
/// The largest of `samples` (the slowest batch, in seconds per operation).
pub(crate) fn slowest(samples: &[f64]) -> Option<f64> {
    samples.iter().copied().reduce(f64::max)
}

pub(crate) fn median(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    Some(if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn plan_runs_warmup_then_samples() {
        let mut calls = Vec::new();
        let plan = Plan {
            warmup: 1,
            samples: 3,
            ops: 5,
        };
        let r = plan.run(|ops| {
            calls.push(ops);
            Ok::<(), String>(())
        });
        assert!(r.is_ok());
        assert_eq!(calls, [5, 5, 5, 5]);
        let err = plan.run(|_| Err("boom"));
        assert_eq!(err, Err("boom".to_string()));
    }

    #[test]
    fn alternating_runs_interleave_and_keep_errors_apart() {
        let order = std::cell::RefCell::new(String::new());
        let plan = Plan {
            warmup: 1,
            samples: 2,
            ops: 1,
        };
        let (a, b) = plan.run_alternating(
            |_| {
                order.borrow_mut().push('a');
                Ok::<(), String>(())
            },
            |_| {
                order.borrow_mut().push('b');
                Err("b failed")
            },
        );
        assert_eq!(*order.borrow(), "abaa");
        assert!(a.is_ok());
        assert_eq!(b, Err("b failed".to_string()));
    }

    #[test]
    fn interleaved_runs_take_turns() {
        let order = std::cell::RefCell::new(String::new());
        let plan = Plan {
            warmup: 1,
            samples: 2,
            ops: 1,
        };
        let mut a = |_| {
            order.borrow_mut().push('a');
            Ok(())
        };
        let mut b = |_| {
            order.borrow_mut().push('b');
            Err("b failed".to_string())
        };
        let mut c = |_| {
            order.borrow_mut().push('c');
            Ok(())
        };
        let r = plan.run_interleaved(&mut [&mut a, &mut b, &mut c]);
        assert_eq!(*order.borrow(), "abcacac");
        assert!(r[0].is_ok() && r[2].is_ok());
        assert_eq!(r[1], Err("b failed".to_string()));
    }
}
