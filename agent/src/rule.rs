//! Local rules: turns readings into raise and clear events, with hysteresis and delays.
//!
//! Each rule is a four-state machine, evaluated on the sample path before any I/O, so alerts
//! fire whether or not the gateway is online. Time is the readings' own time, so a replay of
//! the same readings gives the same events:
//!
//! ```text
//!            breached                  held on_delay_ms ─► Raise
//!   ┌────────┐ ──────► ┌─────────┐ ─────────────────────────► ┌────────┐
//!   │ Normal │ ◄────── │ Pending │                            │ Active │
//!   └────────┘ !breach └─────────┘      !cleared              └────────┘
//!        ▲                          ┌──────────┐ ◄──────────────  │ cleared
//!        └──────────────────────────│ Clearing │ ◄────────────────┘
//!          held off_delay_ms ─► Clear└──────────┘
//! ```
//!
//! With no delay the middle states are skipped within the same reading. `breached` and
//! `cleared` come from [`ThresholdRule`]; since a valid rule's clear level is on the safe side
//! of its threshold, a reading can never raise and clear in one step. A NaN reading changes
//! nothing. `rate_*` rules feed the machine the rate of change instead of the value;
//! `no_data` rules are driven by [`RuleSet::tick`] and clear on the next reading.
//!
//! Active alarms survive restarts: [`RuleSet::active_alarms`] and [`RuleSet::restore`], kept
//! on disk by [`store::AlarmStore`].

pub mod action;
pub mod store;

use std::collections::VecDeque;

use osprey_protocol::{Alert, AlertEvent, Comparison, ThresholdRule};
use serde::{Deserialize, Serialize};

use crate::reading::Reading;

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleState {
    /// No alert is active.
    Normal,
    /// The raise condition holds, waiting for `on_delay_ms`.
    Pending,
    /// The alert was raised and has not cleared yet.
    Active,
    /// The clear condition holds, waiting for `off_delay_ms`; the alert is still active.
    Clearing,
}

impl RuleState {
    /// Whether the alert is raised (active or waiting to clear).
    pub fn is_raised(self) -> bool {
        matches!(self, RuleState::Active | RuleState::Clearing)
    }
}

/// A raised alarm as persisted across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlarm {
    /// Rule id.
    pub rule: String,
    /// Time of the raise, ms since the Unix epoch.
    pub since_ms: i64,
    /// The level that was crossed when raised.
    pub level: f64,
}

/// One rule and its state.
#[derive(Debug, Clone)]
struct Machine {
    rule: ThresholdRule,
    state: RuleState,
    /// When the current Pending/Clearing period started (reading time).
    since_ms: i64,
    /// Raise time and crossed level while raised.
    raised: Option<(i64, f64)>,
    /// `rate_*`: recent (time, value) pairs, oldest first.
    history: VecDeque<(i64, f64)>,
    /// `no_data`: last reading time, or the first tick when none came yet.
    last_seen_ms: Option<i64>,
}

impl Machine {
    fn new(rule: ThresholdRule) -> Machine {
        Machine {
            rule,
            state: RuleState::Normal,
            since_ms: 0,
            raised: None,
            history: VecDeque::new(),
            last_seen_ms: None,
        }
    }

    fn watches(&self, reading: &Reading) -> bool {
        self.rule.sensor == reading.sensor && self.rule.metric == reading.metric
    }

    /// The signal the machine compares: the value, or for `rate_*` the rate in units/s.
    fn signal(&mut self, t: i64, value: f64) -> Option<f64> {
        match self.rule.when {
            Comparison::RateAbove | Comparison::RateBelow => {
                if !value.is_finite() {
                    return None;
                }
                let window = self.rule.window_ms.map_or(0, |w| w as i64);
                // Drop what the window no longer needs, but keep the newest older point so
                // that a rate can always be taken against the previous reading.
                while self.history.len() > 1
                    && self.history.get(1).is_some_and(|(t1, _)| t - t1 >= window)
                {
                    self.history.pop_front();
                }
                let rate = self.history.front().and_then(|(t0, v0)| {
                    let dt = t.checked_sub(*t0).filter(|dt| *dt > 0)?;
                    Some((value - v0) / (dt as f64 / 1000.0))
                });
                self.history.push_back((t, value));
                rate
            }
            _ => Some(value),
        }
    }

    /// The crossed level to report for a raise at `x`.
    fn raise_level(&self, x: f64) -> f64 {
        match self.rule.when {
            Comparison::Outside => {
                let high = self.rule.high.unwrap_or(f64::NAN);
                if x >= high {
                    high
                } else {
                    self.rule.low.unwrap_or(f64::NAN)
                }
            }
            _ => self.rule.threshold,
        }
    }

    /// The clear level to report for a clear at `x`.
    fn clear_level(&self) -> f64 {
        match self.rule.when {
            Comparison::Outside => {
                let (clear_low, clear_high) = self.rule.clear_band();
                match self.raised {
                    Some((_, level)) if level <= self.rule.low.unwrap_or(f64::NAN) => clear_low,
                    _ => clear_high,
                }
            }
            _ => self.rule.clear_level(),
        }
    }

    /// Advances the machine with signal `x` at time `t`; returns the event and its level.
    fn step(&mut self, t: i64, x: f64) -> Option<(AlertEvent, f64)> {
        let (breached, cleared) = (self.rule.breached(x), self.rule.cleared(x));
        let (on_delay, off_delay) = (self.rule.on_delay_ms, self.rule.off_delay_ms);
        loop {
            match self.state {
                RuleState::Normal if breached => {
                    self.state = RuleState::Pending;
                    self.since_ms = t;
                }
                RuleState::Pending if !breached => self.state = RuleState::Normal,
                RuleState::Pending if held(self.since_ms, t, on_delay) => {
                    let level = self.raise_level(x);
                    self.state = RuleState::Active;
                    self.raised = Some((t, level));
                    return Some((AlertEvent::Raise, level));
                }
                RuleState::Active if cleared => {
                    self.state = RuleState::Clearing;
                    self.since_ms = t;
                }
                RuleState::Clearing if !cleared => self.state = RuleState::Active,
                RuleState::Clearing if held(self.since_ms, t, off_delay) => {
                    let level = self.clear_level();
                    self.state = RuleState::Normal;
                    self.raised = None;
                    return Some((AlertEvent::Clear, level));
                }
                _ => return None,
            }
        }
    }

    fn alert(&self, event: AlertEvent, value: f64, level: f64, time_ms: i64) -> Alert {
        Alert {
            rule: self.rule.id.clone(),
            sensor: self.rule.sensor.clone(),
            metric: self.rule.metric.clone(),
            event,
            severity: self.rule.severity,
            value,
            threshold: level,
            time_ms,
        }
    }
}

/// Whether a condition that started at `since` has held `delay_ms` by `t`.
fn held(since: i64, t: i64, delay_ms: u64) -> bool {
    i128::from(t) - i128::from(since) >= i128::from(delay_ms)
}

/// A set of rules and their states.
#[derive(Debug, Clone)]
pub struct RuleSet {
    machines: Vec<Machine>,
}

impl RuleSet {
    /// Rules, all starting in [`RuleState::Normal`]. The rules are expected to be valid
    /// ([`ThresholdRule::validate`]); the config loader checks them.
    pub fn new(rules: Vec<ThresholdRule>) -> RuleSet {
        RuleSet {
            machines: rules.into_iter().map(Machine::new).collect(),
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> impl Iterator<Item = &ThresholdRule> {
        self.machines.iter().map(|m| &m.rule)
    }

    /// The state of rule `id`, if there is such a rule.
    pub fn state(&self, id: &str) -> Option<RuleState> {
        self.machines
            .iter()
            .find(|m| m.rule.id == id)
            .map(|m| m.state)
    }

    /// Feeds one reading to every rule that watches its sensor and metric; returns the events
    /// it caused, in rule order (usually none).
    pub fn evaluate(&mut self, reading: &Reading) -> Vec<Alert> {
        let mut events = Vec::new();
        for m in &mut self.machines {
            if !m.watches(reading) {
                continue;
            }
            let t = reading.time_ms;
            if m.rule.when == Comparison::NoData {
                let silence = m.last_seen_ms.map_or(0, |last| t.saturating_sub(last));
                m.last_seen_ms = Some(t);
                if m.state.is_raised() {
                    m.state = RuleState::Normal;
                    m.raised = None;
                    let timeout = timeout_s(&m.rule);
                    events.push(m.alert(AlertEvent::Clear, ms_to_s(silence), timeout, t));
                }
                continue;
            }
            let Some(x) = m.signal(t, reading.value) else {
                continue;
            };
            if x.is_nan() {
                continue;
            }
            if let Some((event, level)) = m.step(t, x) {
                events.push(m.alert(event, x, level, t));
            }
        }
        events
    }

    /// Lets time pass to `now_ms` with no reading: raises `no_data` rules whose sensor has
    /// been silent for their timeout (counted from the first tick if it never reported).
    /// Call it once per sample, after [`RuleSet::evaluate`].
    pub fn tick(&mut self, now_ms: i64) -> Vec<Alert> {
        let mut events = Vec::new();
        for m in &mut self.machines {
            if m.rule.when != Comparison::NoData {
                continue;
            }
            let last = *m.last_seen_ms.get_or_insert(now_ms);
            let silence = now_ms.saturating_sub(last);
            let timeout = m.rule.timeout_ms.unwrap_or(u64::MAX);
            if !m.state.is_raised() && held(last, now_ms, timeout) {
                let level = timeout_s(&m.rule);
                m.state = RuleState::Active;
                m.raised = Some((now_ms, level));
                events.push(m.alert(AlertEvent::Raise, ms_to_s(silence), level, now_ms));
            }
        }
        events
    }

    /// The raised alarms, for persisting.
    pub fn active_alarms(&self) -> Vec<ActiveAlarm> {
        self.machines
            .iter()
            .filter_map(|m| {
                m.raised.map(|(since_ms, level)| ActiveAlarm {
                    rule: m.rule.id.clone(),
                    since_ms,
                    level,
                })
            })
            .collect()
    }

    /// Marks the rules of `alarms` raised again (after a restart), so that they clear with a
    /// clear event instead of raising a second time. Alarms of rules that no longer exist are
    /// ignored; returns how many were restored.
    pub fn restore(&mut self, alarms: &[ActiveAlarm]) -> usize {
        let mut restored = 0;
        for alarm in alarms {
            if let Some(m) = self.machines.iter_mut().find(|m| m.rule.id == alarm.rule) {
                m.state = RuleState::Active;
                m.raised = Some((alarm.since_ms, alarm.level));
                restored += 1;
            }
        }
        restored
    }

    /// Replaces the rules (config reload) and keeps the state of every rule whose id and
    /// document are unchanged; a changed rule keeps only its raised alarm, so that it clears
    /// under its new levels rather than being forgotten.
    pub fn reconfigure(&mut self, rules: Vec<ThresholdRule>) {
        let mut old = std::mem::take(&mut self.machines);
        for rule in rules {
            let machine = match old.iter().position(|m| m.rule.id == rule.id) {
                Some(i) if old[i].rule == rule => old.swap_remove(i),
                Some(i) => {
                    let prev = old.swap_remove(i);
                    let mut m = Machine::new(rule);
                    if let Some(raised) = prev.raised {
                        m.state = RuleState::Active;
                        m.raised = Some(raised);
                    }
                    m
                }
                None => Machine::new(rule),
            };
            self.machines.push(machine);
        }
    }
}

/// One line for a person: `bearing-hot (bearing/temperature above 80, clear 75, critical)`.
pub fn describe(r: &ThresholdRule) -> String {
    let condition = match r.when {
        Comparison::Outside => {
            let (low, high) = r.clear_band();
            format!(
                "outside {}..{}, clear inside {low}..{high}",
                r.low.unwrap_or(f64::NAN),
                r.high.unwrap_or(f64::NAN)
            )
        }
        Comparison::NoData => format!("no data for {} ms", r.timeout_ms.unwrap_or(0)),
        when => format!("{} {}, clear {}", when.name(), r.threshold, r.clear_level()),
    };
    let delays = match (r.on_delay_ms, r.off_delay_ms) {
        (0, 0) => String::new(),
        (on, off) => format!(", delays on {on} ms off {off} ms"),
    };
    format!(
        "{} ({}/{} {condition}{delays}, {})",
        r.id,
        r.sensor,
        r.metric,
        format!("{:?}", r.severity).to_lowercase()
    )
}

fn timeout_s(rule: &ThresholdRule) -> f64 {
    ms_to_s(
        rule.timeout_ms
            .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
    )
}

fn ms_to_s(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests;
