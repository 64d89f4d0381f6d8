//! The circuit breaker of one upstream, with Resilience4j's count-based semantics.
//!
//! A small state machine of our own rather than failsafe: failsafe has no count window and
//! no limit on half-open calls (its first half-open success closes it and every caller is
//! let through), so a composition would replace nearly all of its logic; and its clock is
//! not ours to drive, while here every transition takes `now`, which lets the tests step
//! through 10-second open periods without sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// How many of the latest calls are judged (the count window).
    pub window: usize,
    /// Opens when at least this share of the window failed (0.5 = 50%).
    pub failure_rate: f64,
    /// How long it stays open.
    pub open_for: Duration,
    /// How many trial calls half-open admits, judged together.
    pub half_open_calls: usize,
    /// How long a trial's answer may wait on its caller to take it before the trial's place
    /// goes to another caller: a caller that reads slowly, or not at all, says nothing of the
    /// upstream, and three of them would otherwise hold every place.
    pub trial_caller_wait: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 10,
            failure_rate: 0.5,
            open_for: Duration::from_secs(10),
            half_open_calls: 3,
            trial_caller_wait: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    Closed,
    Open,
    HalfOpen,
}

impl StateName {
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Closed => "closed",
            StateName::Open => "open",
            StateName::HalfOpen => "half_open",
        }
    }

    /// The value of the `gateway_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            StateName::Closed => 0.0,
            StateName::Open => 1.0,
            StateName::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        outcomes: VecDeque<bool>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// The trials let in that have neither an outcome nor given their place back.
        out: Vec<Trial>,
        outcomes: Vec<bool>,
    },
}

#[derive(Debug)]
struct Trial {
    number: u64,
    /// Since when its answer has waited on its caller to take more of it; none while the
    /// caller is taking it (or the answer has not begun).
    waiting_on_caller: Option<Instant>,
}

/// Permission for one call; its outcome counts only in the state that granted it, and a
/// trial's only while it still holds its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
    /// A half-open trial's number; 0 for a call let through closed.
    trial: u64,
}

impl Permit {
    pub fn is_trial(&self) -> bool {
        self.trial != 0
    }
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// Bumped at every transition, so that late outcomes of an earlier state are ignored.
    generation: u64,
    /// The number of the last trial let in.
    last_trial: u64,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed {
                outcomes: VecDeque::new(),
            },
            generation: 0,
            last_trial: 0,
        }
    }

    /// New numbers apply to what comes next (the next call let in or judged, the next open
    /// period); the current state, its outcomes and its trials are kept. Fewer trials than
    /// have outcomes already bring the verdict at the next call.
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = config;
    }

    pub fn state(&self) -> StateName {
        match self.state {
            State::Closed { .. } => StateName::Closed,
            State::Open { .. } => StateName::Open,
            State::HalfOpen { .. } => StateName::HalfOpen,
        }
    }

    fn transition(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
    }

    /// Moves the state on to what `now` makes it, before a call is let in and when the state
    /// is shown: an open period over is half-open (shown open, an idle upstream's breaker
    /// would look open for good). With the number of trials lowered since they were let in,
    /// the last one out may end with no outcome (released, or its place taken back): the
    /// outcomes in are then all there will be, and are judged here, or the half-open state
    /// would refuse every call for good.
    pub fn advance(&mut self, now: Instant) {
        self.judge_trials(now);
        if let State::Open { until } = self.state
            && now >= until
        {
            self.transition(State::HalfOpen {
                out: Vec::new(),
                outcomes: Vec::new(),
            });
        }
    }

    /// A permit, or how long until calls are let through again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Duration> {
        self.advance(now);
        if let State::Open { until } = self.state {
            return Err(until - now);
        }
        let generation = self.generation;
        let State::HalfOpen { out, outcomes } = &mut self.state else {
            return Ok(Permit {
                generation,
                trial: 0,
            });
        };
        let trials = self.config.half_open_calls;
        if out.len() + outcomes.len() >= trials {
            // Every trial is in, and the verdict comes with their outcomes; but one that has
            // waited on its caller so long gives its place to another.
            let wait = self.config.trial_caller_wait;
            let stuck = out.iter().position(|t| {
                t.waiting_on_caller
                    .is_some_and(|since| now.saturating_duration_since(since) >= wait)
            });
            if let Some(stuck) = stuck {
                out.swap_remove(stuck);
            }
        }
        // Still full if none was stuck, or if the number of trials was lowered since they
        // were let in.
        if out.len() + outcomes.len() >= trials {
            return Err(Duration::from_secs(1));
        }
        self.last_trial += 1;
        out.push(Trial {
            number: self.last_trial,
            waiting_on_caller: None,
        });
        Ok(Permit {
            generation,
            trial: self.last_trial,
        })
    }

    /// The trials holding a place, and where among them the trial of `permit` is; none if
    /// it holds none (not a trial, or one of an earlier state, or one whose place has gone to
    /// another).
    fn place_of(&mut self, permit: Permit) -> Option<(&mut Vec<Trial>, usize)> {
        if permit.generation != self.generation {
            return None;
        }
        let State::HalfOpen { out, .. } = &mut self.state else {
            return None;
        };
        let i = out.iter().position(|t| t.number == permit.trial)?;
        Some((out, i))
    }

    /// Takes the trial of `permit` out of those holding a place; false if it held none.
    fn take_trial(&mut self, permit: Permit) -> bool {
        self.place_of(permit)
            .map(|(out, i)| out.swap_remove(i))
            .is_some()
    }

    /// Notes that the answer to a trial waits on its caller since `since`, or (none) that
    /// the caller is taking it. False if the trial no longer holds a place, and never will.
    pub fn trial_waits_on_caller(&mut self, permit: Permit, since: Option<Instant>) -> bool {
        self.place_of(permit)
            .map(|(out, i)| out[i].waiting_on_caller = since)
            .is_some()
    }

    fn too_many_failures(&self, (failures, total): (usize, usize)) -> bool {
        failures as f64 >= self.config.failure_rate * total as f64
    }

    /// Gives back the permit of a call that ended with no outcome (its caller hung up once
    /// the answer's head had gone, or while its own body was still coming; the caller's own
    /// fault; a caller gone when the calls followed for such callers are at their cap). In
    /// half-open its place goes to another trial, as Resilience4j's `releasePermission` does;
    /// kept, a few callers hanging up would hold every place and the breaker would refuse
    /// calls for good.
    pub fn release(&mut self, permit: Permit) {
        self.take_trial(permit);
    }

    /// Records the outcome of a permitted call.
    pub fn record(&mut self, permit: Permit, success: bool, now: Instant) {
        if permit.generation != self.generation || (permit.is_trial() && !self.take_trial(permit)) {
            return;
        }
        match &mut self.state {
            State::Closed { outcomes } => {
                outcomes.push_back(success);
                while outcomes.len() > self.config.window {
                    outcomes.pop_front();
                }
                let judged =
                    (outcomes.len() == self.config.window).then(|| failures_of(outcomes.iter()));
                if judged.is_some_and(|judged| self.too_many_failures(judged)) {
                    self.open(now);
                }
            }
            State::HalfOpen { outcomes, .. } => {
                outcomes.push(success);
                self.judge_trials(now);
            }
            State::Open { .. } => {}
        }
    }

    /// The half-open verdict, once as many outcomes are in as trials are let in. At least,
    /// not exactly: the number of trials may have been lowered by a live config change after
    /// they were let in, and a verdict must still come.
    fn judge_trials(&mut self, now: Instant) {
        let State::HalfOpen { outcomes, .. } = &self.state else {
            return;
        };
        if outcomes.len() < self.config.half_open_calls {
            return;
        }
        let judged = failures_of(outcomes.iter());
        if self.too_many_failures(judged) {
            self.open(now);
        } else {
            self.transition(State::Closed {
                outcomes: VecDeque::new(),
            });
        }
    }

    fn open(&mut self, now: Instant) {
        self.transition(State::Open {
            until: now + self.config.open_for,
        });
    }
}

/// The failures among `outcomes`, and how many outcomes there are.
fn failures_of<'a>(outcomes: impl ExactSizeIterator<Item = &'a bool>) -> (usize, usize) {
    let total = outcomes.len();
    (outcomes.filter(|ok| !**ok).count(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, Instant) {
        (Breaker::new(BreakerConfig::default()), Instant::now())
    }

    fn calls(b: &mut Breaker, now: Instant, outcomes: &[bool]) {
        for ok in outcomes {
            let p = b.try_acquire(now).expect("a permit");
            b.record(p, *ok, now);
        }
    }

    const OK: bool = true;
    const FAIL: bool = false;

    #[test]
    fn five_failures_of_ten_open_it() {
        let (mut b, now) = breaker();
        calls(&mut b, now, &[FAIL, OK, FAIL, OK, FAIL, OK, FAIL, OK, OK]);
        assert_eq!(
            b.state(),
            StateName::Closed,
            "nothing is judged before the 10th call"
        );
        calls(&mut b, now, &[FAIL]);
        assert_eq!(b.state(), StateName::Open);
        assert_eq!(b.try_acquire(now), Err(Duration::from_secs(10)));
    }

    #[test]
    fn four_failures_of_ten_do_not() {
        let (mut b, now) = breaker();
        calls(
            &mut b,
            now,
            &[OK, OK, OK, OK, OK, OK, FAIL, FAIL, FAIL, FAIL],
        );
        assert_eq!(b.state(), StateName::Closed);
        // The window slides: the oldest success leaves as a fifth failure arrives.
        calls(&mut b, now, &[FAIL]);
        assert_eq!(b.state(), StateName::Open, "now 5 of the last 10");
    }

    fn opened() -> (Breaker, Instant) {
        let (mut b, now) = breaker();
        calls(&mut b, now, &[FAIL; 10]);
        assert_eq!(b.state(), StateName::Open);
        (b, now)
    }

    /// A breaker just past its open period, and the permits of the three trials it let in.
    fn trials_let_in() -> (Breaker, Instant, Vec<Permit>) {
        let (mut b, now) = opened();
        let later = now + Duration::from_secs(10);
        let trials = (0..3).map(|_| b.try_acquire(later).unwrap()).collect();
        (b, later, trials)
    }

    #[test]
    fn after_the_open_period_exactly_three_trials_pass_and_a_fourth_is_rejected() {
        let (mut b, now) = opened();
        assert!(b.try_acquire(now + Duration::from_millis(9_999)).is_err());
        let later = now + Duration::from_secs(10);
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(later).unwrap()).collect();
        assert_eq!(b.state(), StateName::HalfOpen);
        assert!(
            b.try_acquire(later).is_err(),
            "the fourth concurrent caller is rejected"
        );
        for p in trials {
            b.record(p, OK, later);
        }
        assert_eq!(b.state(), StateName::Closed);
    }

    fn half_open_verdict(outcomes: [bool; 3]) -> StateName {
        let (mut b, later, trials) = trials_let_in();
        for (p, ok) in trials.into_iter().zip(outcomes) {
            b.record(p, ok, later);
        }
        b.state()
    }

    #[test]
    fn three_successes_or_two_with_one_failure_close_it() {
        assert_eq!(half_open_verdict([OK, OK, OK]), StateName::Closed);
        assert_eq!(half_open_verdict([OK, FAIL, OK]), StateName::Closed);
    }

    #[test]
    fn two_or_three_failures_of_the_trials_reopen_it_for_the_full_period() {
        assert_eq!(half_open_verdict([FAIL, OK, FAIL]), StateName::Open);
        assert_eq!(half_open_verdict([FAIL, FAIL, FAIL]), StateName::Open);
        let (mut b, later, trials) = trials_let_in();
        for p in trials {
            b.record(p, FAIL, later);
        }
        assert_eq!(
            b.try_acquire(later + Duration::from_secs(5)),
            Err(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_closed_breaker_starts_a_fresh_window() {
        let (mut b, later, trials) = trials_let_in();
        for p in trials {
            b.record(p, OK, later);
        }
        calls(&mut b, later, &[FAIL; 9]);
        assert_eq!(
            b.state(),
            StateName::Closed,
            "the old failures are forgotten"
        );
    }

    #[test]
    fn a_trial_given_back_without_an_outcome_lets_another_in() {
        let (mut b, later, trials) = trials_let_in();
        assert!(b.try_acquire(later).is_err());
        b.release(trials[0]);
        let replacement = b.try_acquire(later).expect("the given-back place");
        assert!(b.try_acquire(later).is_err(), "still three at most");
        for p in [trials[1], trials[2], replacement] {
            b.record(p, OK, later);
        }
        assert_eq!(b.state(), StateName::Closed);
        // A permit of an earlier state given back changes nothing now.
        b.release(trials[0]);
        calls(&mut b, later, &[FAIL; 10]);
        assert_eq!(b.state(), StateName::Open);
    }

    #[test]
    fn a_trial_whose_answer_waits_on_its_caller_too_long_gives_its_place_to_another() {
        let (mut b, later, trials) = trials_let_in();
        let wait = BreakerConfig::default().trial_caller_wait;
        b.trial_waits_on_caller(trials[0], Some(later));
        // Waiting, then taken again: its wait starts over.
        b.trial_waits_on_caller(trials[1], Some(later));
        b.trial_waits_on_caller(trials[1], None);
        assert!(
            b.try_acquire(later + wait - Duration::from_millis(1))
                .is_err()
        );
        let replacement = b
            .try_acquire(later + wait)
            .expect("the untaken trial's place");
        assert!(
            b.try_acquire(later + wait * 10).is_err(),
            "still three at most, none of them waiting on its caller"
        );
        // A trial that lost its place has no say: counted, this failure and the next would
        // be 2 of the 3 and reopen it.
        b.record(trials[0], FAIL, later + wait);
        b.release(trials[0]);
        assert!(!b.trial_waits_on_caller(trials[0], None));
        b.record(trials[1], FAIL, later + wait);
        b.record(trials[2], OK, later + wait);
        assert_eq!(b.state(), StateName::HalfOpen, "two outcomes of three");
        b.record(replacement, OK, later + wait);
        assert_eq!(b.state(), StateName::Closed, "1 failure of 3");
    }

    #[test]
    fn an_untaken_trial_makes_no_room_beyond_a_lowered_number_of_trials() {
        let (mut b, later, trials) = trials_let_in();
        let wait = BreakerConfig::default().trial_caller_wait;
        b.trial_waits_on_caller(trials[0], Some(later));
        b.reconfigure(BreakerConfig {
            half_open_calls: 2,
            ..BreakerConfig::default()
        });
        assert!(
            b.try_acquire(later + wait).is_err(),
            "two trials still hold places, as many as are now allowed"
        );
        b.record(trials[1], OK, later + wait);
        b.record(trials[2], OK, later + wait);
        assert_eq!(b.state(), StateName::Closed);
    }

    #[test]
    fn fewer_trials_configured_while_half_open_still_bring_a_verdict() {
        let (mut b, later, trials) = trials_let_in();
        b.record(trials[0], OK, later);
        b.record(trials[1], OK, later);
        b.reconfigure(BreakerConfig {
            half_open_calls: 2,
            ..BreakerConfig::default()
        });
        b.record(trials[2], OK, later);
        assert_eq!(b.state(), StateName::Closed);
    }

    #[test]
    fn fewer_trials_configured_while_half_open_bring_a_verdict_when_the_last_ends_unjudged() {
        let wait = BreakerConfig::default().trial_caller_wait;
        for (outcomes, verdict) in [([OK, OK], StateName::Closed), ([FAIL, OK], StateName::Open)] {
            // The last trial's caller hangs up (released), or leaves its answer unread until
            // its place could be taken back: either way it brings no outcome.
            for stuck in [false, true] {
                let (mut b, later, trials) = trials_let_in();
                b.record(trials[0], outcomes[0], later);
                b.record(trials[1], outcomes[1], later);
                b.reconfigure(BreakerConfig {
                    half_open_calls: 2,
                    ..BreakerConfig::default()
                });
                let now = if stuck {
                    b.trial_waits_on_caller(trials[2], Some(later));
                    later + wait
                } else {
                    b.release(trials[2]);
                    later
                };
                let next = b.try_acquire(now);
                assert_eq!(b.state(), verdict, "{outcomes:?}, stuck: {stuck}");
                assert_eq!(next.is_ok(), verdict == StateName::Closed);
            }
        }
    }

    #[test]
    fn an_open_period_over_is_half_open_before_any_call_comes() {
        let (mut b, now) = breaker();
        calls(&mut b, now, &[FAIL; 10]);
        let open_for = BreakerConfig::default().open_for;
        b.advance(now + open_for - Duration::from_millis(1));
        assert_eq!(b.state(), StateName::Open);
        b.advance(now + open_for);
        assert_eq!(b.state(), StateName::HalfOpen);
    }

    #[test]
    fn late_outcomes_of_an_earlier_state_are_ignored() {
        let (mut b, now) = breaker();
        let slow = b.try_acquire(now).unwrap();
        calls(&mut b, now, &[FAIL; 10]);
        assert_eq!(b.state(), StateName::Open);
        b.record(slow, OK, now);
        assert_eq!(b.state(), StateName::Open);
    }
}
