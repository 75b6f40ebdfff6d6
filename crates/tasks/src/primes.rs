//! CPU-bound work: counting primes below `n`, with and without a process-wide lock.

use std::sync::Mutex;

use procpool_protocol::{Task, TaskError, TaskInfo};
use serde::{Deserialize, Serialize};

/// The largest `n` accepted (the sieve needs `n / 2` bytes).
pub const MAX_N: u64 = 200_000_000;

/// Input of [`Primes`] and [`Locked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimesIn {
    /// Count the primes below this.
    pub n: u64,
}

/// Output of [`Primes`] and [`Locked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimesOut {
    /// The input.
    pub n: u64,
    /// How many primes are below `n`.
    pub primes: u64,
}

/// Number of primes `p < n`, by a sieve over the odd numbers.
pub fn count_primes_below(n: u64) -> u64 {
    if n <= 2 {
        return 0;
    }
    // Index i stands for the odd number 2i + 1; index 0 (the number 1) is not prime.
    let len = (n / 2) as usize; // odd numbers below n: 1, 3, ..., < n
    let mut composite = vec![false; len];
    composite[0] = true;
    let mut i = 1usize;
    while (2 * i + 1) * (2 * i + 1) < n as usize {
        if !composite[i] {
            let p = 2 * i + 1;
            let mut j = (p * p) / 2;
            while j < len {
                composite[j] = true;
                j += p;
            }
        }
        i += 1;
    }
    1 + composite.iter().filter(|c| !**c).count() as u64
}

fn checked(input: PrimesIn) -> Result<u64, TaskError> {
    if input.n > MAX_N {
        return Err(format!("n = {} is over the limit of {MAX_N}", input.n).into());
    }
    Ok(count_primes_below(input.n))
}

fn info(name: &str, description: &str) -> TaskInfo {
    TaskInfo {
        name: name.into(),
        description: description.into(),
        input_fields: vec!["n".into()],
        output_fields: vec!["n".into(), "primes".into()],
        ..TaskInfo::default()
    }
}

/// Count the primes below `n`: pure CPU work.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Primes;

impl Task for Primes {
    const NAME: &'static str = "primes";
    type Input = PrimesIn;
    type Output = PrimesOut;

    fn run(&self, input: PrimesIn) -> Result<PrimesOut, TaskError> {
        Ok(PrimesOut {
            n: input.n,
            primes: checked(input)?,
        })
    }

    fn label(input: &PrimesIn) -> Option<String> {
        Some(format!("n={}", input.n))
    }

    fn info() -> TaskInfo {
        info(Self::NAME, "how many primes are below n (CPU-bound)")
    }
}

/// The one lock every [`Locked`] record takes: the stand-in for a global
/// interpreter lock. Threads of one process serialise on it; processes do not.
static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// [`Primes`], computed while holding a process-wide lock.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Locked;

impl Task for Locked {
    const NAME: &'static str = "locked";
    type Input = PrimesIn;
    type Output = PrimesOut;

    fn run(&self, input: PrimesIn) -> Result<PrimesOut, TaskError> {
        // A poisoned lock only means another record panicked while holding it.
        let _guard = PROCESS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        Primes.run(input)
    }

    fn label(input: &PrimesIn) -> Option<String> {
        Some(format!("n={}", input.n))
    }

    fn info() -> TaskInfo {
        info(
            Self::NAME,
            "as primes, holding a process-wide lock (a global-interpreter-lock stand-in)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(n: u64) -> u64 {
        (2..n)
            .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
            .count() as u64
    }

    #[test]
    fn sieve_matches_trial_division() {
        for n in 0..2000 {
            assert_eq!(count_primes_below(n), naive(n), "n = {n}");
        }
        assert_eq!(count_primes_below(1_000_000), 78_498);
    }

    #[test]
    fn over_limit_is_an_error_not_an_allocation() {
        assert!(Primes.run(PrimesIn { n: u64::MAX }).is_err());
        assert_eq!(Locked.run(PrimesIn { n: 100 }).unwrap().primes, 25);
    }
}
