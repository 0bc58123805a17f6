//! Per-subscription pacing: how many attempts one receiver may have open at once.
//!
//! A window in the manner of TCP congestion control. It starts small, doubles per round of
//! prompt answers (slow start) up to a threshold, then grows by one per round (additive
//! increase); a connection failure, timeout, 429 or 503 halves it (multiplicative decrease),
//! once per round, so a burst of failures from one window cuts it only once. An answer is
//! prompt when its latency stays near the fastest seen: a receiver whose queue grows stops
//! the growth before it fails. Attempts the window holds back simply wait; they are no
//! failures and use up no retry.

/// Attempts a fresh window allows.
const INITIAL: f64 = 4.0;
/// Latency above the fastest seen that still counts as prompt: twice the fastest, plus this.
const PROMPT_SLACK_MS: u64 = 20;
/// The fastest latency is the minimum over the last one to two of these periods, so that an
/// early lucky answer, or a path that got slower, does not define "prompt" forever.
const BASE_PERIOD_MS: u64 = 10_000;

/// What an attempt's outcome says about the receiver's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A success: grow if it was prompt.
    Answered,
    /// Connection failure, timeout, reset, 429 or 503: the receiver is overrun.
    Overrun,
    /// Anything else (a 500, a 404…): says nothing about capacity.
    Neutral,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    limit: f64,
    /// Slow start ends here; set to half the window at each cut.
    threshold: f64,
    max: f64,
    /// The fastest answer of the current period and of the one before.
    fastest_now_ms: Option<u64>,
    fastest_before_ms: Option<u64>,
    period_start_ms: u64,
    /// Attempts started before this instant cannot cut the window again.
    cut_at_ms: u64,
}

impl Window {
    /// A window of at most `max` attempts (at least 1).
    pub fn new(max: usize) -> Window {
        let max = max.max(1) as f64;
        Window {
            limit: INITIAL.min(max),
            threshold: max,
            max,
            fastest_now_ms: None,
            fastest_before_ms: None,
            period_start_ms: 0,
            cut_at_ms: 0,
        }
    }

    /// Attempts allowed at once now.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Learns from one attempt that started at `started_ms` and ended at `now_ms`.
    pub fn observe(&mut self, signal: Signal, started_ms: u64, now_ms: u64) {
        match signal {
            Signal::Answered => self.answered(now_ms.saturating_sub(started_ms), now_ms),
            Signal::Overrun => self.overrun(started_ms, now_ms),
            Signal::Neutral => {}
        }
    }

    fn answered(&mut self, latency_ms: u64, now_ms: u64) {
        let base = self.fastest(latency_ms, now_ms);
        if latency_ms > base.saturating_mul(2).saturating_add(PROMPT_SLACK_MS) {
            return;
        }
        let step = if self.limit < self.threshold {
            1.0
        } else {
            1.0 / self.limit
        };
        self.limit = (self.limit + step).min(self.max);
    }

    /// Records a latency; returns the fastest of this period and the one before.
    fn fastest(&mut self, latency_ms: u64, now_ms: u64) -> u64 {
        if now_ms.saturating_sub(self.period_start_ms) >= BASE_PERIOD_MS {
            self.fastest_before_ms = self.fastest_now_ms.take();
            self.period_start_ms = now_ms;
        }
        let now = self
            .fastest_now_ms
            .map_or(latency_ms, |f| f.min(latency_ms));
        self.fastest_now_ms = Some(now);
        self.fastest_before_ms.map_or(now, |before| before.min(now))
    }

    fn overrun(&mut self, started_ms: u64, now_ms: u64) {
        if started_ms < self.cut_at_ms {
            return;
        }
        self.limit = (self.limit / 2.0).max(1.0);
        self.threshold = self.limit;
        self.cut_at_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` prompt answers of `latency` ms, each started at `at`.
    fn answer(w: &mut Window, n: usize, at: u64, latency: u64) {
        for _ in 0..n {
            w.observe(Signal::Answered, at, at + latency);
        }
    }

    #[test]
    fn starts_small_and_slow_starts_to_the_maximum() {
        let mut w = Window::new(32);
        assert_eq!(w.limit(), 4);
        answer(&mut w, 4, 0, 1);
        assert_eq!(w.limit(), 8);
        answer(&mut w, 100, 0, 1);
        assert_eq!(w.limit(), 32);
    }

    #[test]
    fn a_small_maximum_caps_the_start() {
        assert_eq!(Window::new(2).limit(), 2);
        assert_eq!(Window::new(0).limit(), 1);
    }

    #[test]
    fn overrun_halves_once_per_round_and_never_below_one() {
        let mut w = Window::new(32);
        answer(&mut w, 28, 0, 1);
        assert_eq!(w.limit(), 32);
        // A whole window of attempts started at 10 fails at 20: one cut.
        for _ in 0..32 {
            w.observe(Signal::Overrun, 10, 20);
        }
        assert_eq!(w.limit(), 16);
        // An attempt started after the cut cuts again.
        w.observe(Signal::Overrun, 21, 30);
        assert_eq!(w.limit(), 8);
        for t in 0..10 {
            w.observe(Signal::Overrun, 100 + 10 * t, 105 + 10 * t);
        }
        assert_eq!(w.limit(), 1);
    }

    #[test]
    fn after_a_cut_growth_is_additive() {
        let mut w = Window::new(32);
        answer(&mut w, 28, 0, 1);
        w.observe(Signal::Overrun, 10, 20);
        assert_eq!(w.limit(), 16);
        // One more attempt per round of about 16 answers, not one per answer.
        answer(&mut w, 15, 30, 1);
        assert_eq!(w.limit(), 16);
        answer(&mut w, 2, 30, 1);
        assert_eq!(w.limit(), 17);
    }

    #[test]
    fn slow_answers_stop_the_growth() {
        let mut w = Window::new(32);
        answer(&mut w, 1, 0, 5);
        // 5 ms is the fastest: up to 2 × 5 + 20 = 30 ms still grows, 31 ms does not.
        answer(&mut w, 3, 0, 30);
        assert_eq!(w.limit(), 8);
        answer(&mut w, 50, 0, 31);
        assert_eq!(w.limit(), 8);
    }

    #[test]
    fn the_fastest_latency_is_forgotten_after_two_periods() {
        let mut w = Window::new(32);
        answer(&mut w, 1, 0, 0);
        // 100 ms answers are slow next to a 0 ms one, for this period and the next…
        answer(&mut w, 10, 0, 100);
        let second_period = BASE_PERIOD_MS;
        answer(&mut w, 10, second_period, 100);
        assert_eq!(w.limit(), 5);
        // …then they are the fastest there is, and prompt.
        answer(&mut w, 3, 2 * second_period, 100);
        assert_eq!(w.limit(), 8);
    }

    #[test]
    fn neutral_outcomes_change_nothing() {
        let mut w = Window::new(32);
        let before = w.clone();
        w.observe(Signal::Neutral, 0, 10_000);
        assert_eq!(w, before);
    }
}
