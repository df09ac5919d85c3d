//! Call setup timing: from an offer to the answer, whichever direction each went.

use std::time::Duration;

use super::SignalKind;

/// Times offer → answer for one signaling session. Feed it every message's [`SignalKind`] with `now`.
///
/// The earliest unanswered offer starts the clock (a second offer before the answer, as in
/// glare, does not restart it); the next answer stops it. Each offer/answer pair gives one
/// measurement; [`CallSetup::first`] keeps the first, the session's call setup time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallSetup {
    offer_at: Option<Duration>,
    first: Option<Duration>,
}

impl CallSetup {
    /// A session that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a message; returns the setup time when `kind` is an answer to a pending offer.
    #[must_use]
    pub fn observe(&mut self, kind: SignalKind, now: Duration) -> Option<Duration> {
        match kind {
            SignalKind::Offer => {
                self.offer_at.get_or_insert(now);
                None
            }
            SignalKind::Answer => {
                let took = now.saturating_sub(self.offer_at.take()?);
                self.first.get_or_insert(took);
                Some(took)
            }
            _ => None,
        }
    }

    /// The first offer → answer time of the session.
    pub fn first(&self) -> Option<Duration> {
        self.first
    }

    /// Whether an offer is waiting for its answer.
    pub fn is_pending(&self) -> bool {
        self.offer_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_then_answer() {
        let ms = Duration::from_millis;
        let mut s = CallSetup::new();
        assert_eq!(
            s.observe(SignalKind::Answer, ms(1)),
            None,
            "an answer without an offer"
        );
        assert_eq!(s.observe(SignalKind::Offer, ms(10)), None);
        assert_eq!(s.observe(SignalKind::Candidate, ms(11)), None);
        assert_eq!(
            s.observe(SignalKind::Offer, ms(12)),
            None,
            "glare keeps the first offer"
        );
        assert!(s.is_pending());
        assert_eq!(s.observe(SignalKind::Answer, ms(50)), Some(ms(40)));
        assert_eq!(s.observe(SignalKind::Answer, ms(60)), None);
        assert_eq!(s.observe(SignalKind::Offer, ms(100)), None);
        assert_eq!(
            s.observe(SignalKind::Answer, ms(105)),
            Some(ms(5)),
            "renegotiation measured"
        );
        assert_eq!(s.first(), Some(ms(40)), "the first call setup is kept");
        assert_eq!(s.observe(SignalKind::Offer, ms(200)), None);
        assert_eq!(
            s.observe(SignalKind::Answer, ms(150)),
            Some(Duration::ZERO),
            "time never runs back"
        );
    }
}
