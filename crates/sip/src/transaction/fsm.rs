//! The four transaction state machines of RFC 3261 §17 with the RFC 6026 "Accepted" states.
//!
//! They know nothing about SIP syntax: the transaction layer feeds them "a response with status N
//! arrived", "the request was retransmitted", "the TU sent this response" and the time, and they answer
//! with [`Action`]s (send these bytes, build an ACK, pass the response up, time out, terminate). That keeps
//! the timer logic testable on its own and the message handling in one place (`transaction.rs`).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{Timer, TimerConfig, TimerTable};

/// What a state machine asks the transaction layer to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the transaction's peer (a (re)transmission).
    Transmit(Bytes),
    /// INVITE client: build the ACK for the non-2xx final response just received (§17.1.1.3), hand it
    /// back with [`ClientInvite::set_ack`] and send it.
    BuildAck,
    /// Pass the message just received up to the TU.
    PassUp,
    /// INVITE server: the TU has not answered within 200 ms; send 100 Trying.
    SendTrying,
    /// The transaction timed out (Timer B, F or H); tell the TU.
    Timeout,
    /// The transaction is over; forget it.
    Terminated,
}

/// States of all four machines (names from RFC 3261 §17 and RFC 6026).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// INVITE client before any response.
    Calling,
    /// non-INVITE client/server before any response.
    Trying,
    /// A provisional response was received/sent.
    Proceeding,
    /// A final (non-2xx for INVITE) response was received/sent.
    Completed,
    /// RFC 6026: a 2xx to an INVITE was received/sent.
    Accepted,
    /// INVITE server: the ACK for a non-2xx arrived.
    Confirmed,
    /// Done.
    Terminated,
}

fn is_provisional(status: u16) -> bool {
    (100..200).contains(&status)
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

/// INVITE client transaction (§17.1.1, RFC 6026 §7.2).
#[derive(Debug, Clone)]
pub struct ClientInvite {
    state: State,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    request: Bytes,
    ack: Option<Bytes>,
    interval_a: Duration,
}

impl ClientInvite {
    /// Starts the transaction: the request is sent at once.
    pub fn start(
        request: Bytes,
        reliable: bool,
        config: TimerConfig,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Self {
        let mut timers = TimerTable::default();
        if !reliable {
            timers.set(Timer::A, now + config.t1);
        }
        timers.set(Timer::B, now + config.t1x64());
        out.push(Action::Transmit(request.clone()));
        Self {
            state: State::Calling,
            reliable,
            config,
            timers,
            request,
            ack: None,
            interval_a: config.t1,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The request this transaction sends (empty once a final response arrived).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// Earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Stores the ACK built after [`Action::BuildAck`] and returns the transmission for it.
    pub fn set_ack(&mut self, ack: Bytes) -> Action {
        self.ack = Some(ack.clone());
        Action::Transmit(ack)
    }

    /// A response with `status` matched this transaction.
    pub fn handle_response(&mut self, status: u16, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Calling | State::Proceeding => {
                if is_provisional(status) {
                    self.state = State::Proceeding;
                    self.timers.stop(Timer::A);
                    self.timers.stop(Timer::B);
                    out.push(Action::PassUp);
                } else if is_2xx(status) {
                    self.state = State::Accepted;
                    self.timers.stop_all();
                    self.timers.set(Timer::M, now + self.config.t1x64());
                    self.request = Bytes::new(); // no more retransmissions
                    out.push(Action::PassUp);
                } else {
                    self.state = State::Completed;
                    self.request = Bytes::new();
                    self.timers.stop_all();
                    let wait_d = if self.reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    self.timers.set(Timer::D, now + wait_d);
                    out.push(Action::BuildAck);
                    out.push(Action::PassUp);
                }
            }
            State::Completed => {
                // Retransmitted final response: ACK again, absorb (§17.1.1.2).
                if !is_provisional(status)
                    && !is_2xx(status)
                    && let Some(ack) = &self.ack
                {
                    out.push(Action::Transmit(ack.clone()));
                }
            }
            // RFC 6026: further 2xx go to the TU (which ACKs them); everything else is absorbed.
            State::Accepted if is_2xx(status) => out.push(Action::PassUp),
            _ => {}
        }
    }

    /// Fires expired timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::A if self.state == State::Calling => {
                    self.interval_a = self.interval_a.saturating_mul(2);
                    self.timers.set(Timer::A, now + self.interval_a);
                    out.push(Action::Transmit(self.request.clone()));
                }
                Timer::B if self.state == State::Calling => {
                    out.push(Action::Timeout);
                    self.terminate(out);
                }
                Timer::D | Timer::M => self.terminate(out),
                _ => {}
            }
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = State::Terminated;
        self.timers.stop_all();
        out.push(Action::Terminated);
    }
}

/// non-INVITE client transaction (§17.1.2).
#[derive(Debug, Clone)]
pub struct ClientNonInvite {
    state: State,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    request: Bytes,
    interval_e: Duration,
}

impl ClientNonInvite {
    /// Starts the transaction: the request is sent at once.
    pub fn start(
        request: Bytes,
        reliable: bool,
        config: TimerConfig,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Self {
        let mut timers = TimerTable::default();
        if !reliable {
            timers.set(Timer::E, now + config.t1);
        }
        timers.set(Timer::F, now + config.t1x64());
        out.push(Action::Transmit(request.clone()));
        Self {
            state: State::Trying,
            reliable,
            config,
            timers,
            request,
            interval_e: config.t1,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// A response with `status` matched this transaction.
    pub fn handle_response(&mut self, status: u16, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Trying | State::Proceeding => {
                if is_provisional(status) {
                    self.state = State::Proceeding;
                    out.push(Action::PassUp);
                } else {
                    self.state = State::Completed;
                    self.timers.stop_all();
                    self.request = Bytes::new(); // no more retransmissions
                    let wait_k = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.config.t4
                    };
                    self.timers.set(Timer::K, now + wait_k);
                    out.push(Action::PassUp);
                }
            }
            // Completed: retransmissions are absorbed.
            _ => {}
        }
    }

    /// Fires expired timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::E if matches!(self.state, State::Trying | State::Proceeding) => {
                    self.interval_e = if self.state == State::Trying {
                        self.interval_e.saturating_mul(2).min(self.config.t2)
                    } else {
                        self.config.t2
                    };
                    self.timers.set(Timer::E, now + self.interval_e);
                    out.push(Action::Transmit(self.request.clone()));
                }
                Timer::F if matches!(self.state, State::Trying | State::Proceeding) => {
                    self.state = State::Terminated;
                    self.timers.stop_all();
                    out.push(Action::Timeout);
                    out.push(Action::Terminated);
                }
                Timer::K => {
                    self.state = State::Terminated;
                    self.timers.stop_all();
                    out.push(Action::Terminated);
                }
                _ => {}
            }
        }
    }
}

/// INVITE server transaction (§17.2.1, RFC 6026 §7.1).
#[derive(Debug, Clone)]
pub struct ServerInvite {
    state: State,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    last_response: Option<(u16, Bytes)>,
    interval_g: Duration,
}

impl ServerInvite {
    /// A new INVITE arrived; the TU will be told (the layer passes it up) and 100 Trying is scheduled.
    pub fn start(reliable: bool, config: TimerConfig, now: Instant) -> Self {
        let mut timers = TimerTable::default();
        timers.set(Timer::Trying, now + config.trying_delay);
        Self {
            state: State::Proceeding,
            reliable,
            config,
            timers,
            last_response: None,
            interval_g: config.t1,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Status of the last response sent, if any.
    pub fn last_status(&self) -> Option<u16> {
        self.last_response.as_ref().map(|(s, _)| *s)
    }

    /// Earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The INVITE was retransmitted: resend the last response (provisional or non-2xx final).
    pub fn handle_request_retransmission(&mut self, out: &mut Vec<Action>) {
        if matches!(self.state, State::Proceeding | State::Completed)
            && let Some((_, bytes)) = &self.last_response
        {
            out.push(Action::Transmit(bytes.clone()));
        }
    }

    /// The ACK for our non-2xx final response arrived.
    pub fn handle_ack(&mut self, now: Instant) {
        if self.state == State::Completed {
            self.state = State::Confirmed;
            self.timers.stop_all();
            let wait_i = if self.reliable {
                Duration::ZERO
            } else {
                self.config.t4
            };
            self.timers.set(Timer::I, now + wait_i);
        }
    }

    /// The TU sends a response (`status`, serialized `bytes`). Returns `false` if the state forbids it.
    pub fn send_response(
        &mut self,
        status: u16,
        bytes: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        match self.state {
            State::Proceeding => {
                self.timers.stop(Timer::Trying);
                out.push(Action::Transmit(bytes.clone()));
                // After a 2xx the TU retransmits (RFC 6026): keep only the status.
                let keep = if is_2xx(status) { Bytes::new() } else { bytes };
                self.last_response = Some((status, keep));
                if is_2xx(status) {
                    self.state = State::Accepted;
                    self.timers.stop_all();
                    self.timers.set(Timer::L, now + self.config.t1x64());
                } else if !is_provisional(status) {
                    self.state = State::Completed;
                    self.timers.stop_all();
                    if !self.reliable {
                        self.timers.set(Timer::G, now + self.config.t1);
                    }
                    self.timers.set(Timer::H, now + self.config.t1x64());
                }
                true
            }
            // RFC 6026: retransmissions of the 2xx by the TU go out through the Accepted state.
            State::Accepted if is_2xx(status) => {
                out.push(Action::Transmit(bytes));
                true
            }
            _ => false,
        }
    }

    /// Fires expired timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::Trying
                    if self.state == State::Proceeding && self.last_response.is_none() =>
                {
                    out.push(Action::SendTrying);
                }
                Timer::G if self.state == State::Completed => {
                    self.interval_g = self.interval_g.saturating_mul(2).min(self.config.t2);
                    self.timers.set(Timer::G, now + self.interval_g);
                    if let Some((_, bytes)) = &self.last_response {
                        out.push(Action::Transmit(bytes.clone()));
                    }
                }
                Timer::H if self.state == State::Completed => {
                    self.state = State::Terminated;
                    self.timers.stop_all();
                    out.push(Action::Timeout);
                    out.push(Action::Terminated);
                }
                Timer::I | Timer::L => {
                    self.state = State::Terminated;
                    self.timers.stop_all();
                    out.push(Action::Terminated);
                }
                _ => {}
            }
        }
    }

    /// Records a 100 Trying sent after [`Action::SendTrying`].
    pub fn trying_sent(&mut self, bytes: Bytes) {
        if self.last_response.is_none() {
            self.last_response = Some((100, bytes));
        }
    }
}

/// non-INVITE server transaction (§17.2.2).
#[derive(Debug, Clone)]
pub struct ServerNonInvite {
    state: State,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    last_response: Option<Bytes>,
}

impl ServerNonInvite {
    /// A new request arrived (the layer passes it up).
    pub fn start(reliable: bool, config: TimerConfig) -> Self {
        Self {
            state: State::Trying,
            reliable,
            config,
            timers: TimerTable::default(),
            last_response: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The request was retransmitted: resend the last response, if any.
    pub fn handle_request_retransmission(&mut self, out: &mut Vec<Action>) {
        if let Some(bytes) = &self.last_response
            && matches!(self.state, State::Proceeding | State::Completed)
        {
            out.push(Action::Transmit(bytes.clone()));
        }
    }

    /// The TU sends a response. Returns `false` once a final response was sent.
    pub fn send_response(
        &mut self,
        status: u16,
        bytes: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        if !matches!(self.state, State::Trying | State::Proceeding) {
            return false;
        }
        out.push(Action::Transmit(bytes.clone()));
        self.last_response = Some(bytes);
        if is_provisional(status) {
            self.state = State::Proceeding;
        } else {
            self.state = State::Completed;
            let wait_j = if self.reliable {
                Duration::ZERO
            } else {
                self.config.t1x64()
            };
            self.timers.set(Timer::J, now + wait_j);
        }
        true
    }

    /// Fires expired timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(timer) = self.timers.pop_expired(now) {
            if timer == Timer::J {
                self.state = State::Terminated;
                self.timers.stop_all();
                out.push(Action::Terminated);
            }
        }
    }
}
