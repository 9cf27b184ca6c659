//! "At most N audit records per agent per second, then one summary": a flooding agent costs a
//! bounded number of records, and every suppressed denial is still counted in a summary.

use std::collections::HashMap;

pub struct Limiter {
    per_second: u32,
    /// key → (window start ms, recorded in window, suppressed in window).
    window: HashMap<u64, (u64, u32, u32)>,
}

impl Limiter {
    pub fn new(per_second: u32) -> Limiter {
        Limiter {
            per_second,
            window: HashMap::new(),
        }
    }

    /// One event of `key` at `now_ms`: the count of a just-closed window's suppressed events
    /// (to summarize first, if any), and whether to record this event.
    pub fn admit(&mut self, key: u64, now_ms: u64) -> (Option<u32>, bool) {
        let w = self.window.entry(key).or_insert((now_ms, 0, 0));
        let mut closed = None;
        if now_ms.saturating_sub(w.0) >= 1000 {
            closed = Some(w.2).filter(|&n| n > 0);
            *w = (now_ms, 0, 0);
        }
        if w.1 >= self.per_second {
            w.2 += 1;
            return (closed, false);
        }
        w.1 += 1;
        (closed, true)
    }

    /// Closes the windows older than a second: (key, suppressed count) of those with any.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        self.window.retain(|k, w| {
            if now_ms.saturating_sub(w.0) < 1000 {
                return true;
            }
            if w.2 > 0 {
                out.push((*k, w.2));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_then_summarizes() {
        let mut l = Limiter::new(3);
        let admitted = (0..10).filter(|_| l.admit(7, 1000).1).count();
        assert_eq!(admitted, 3);
        assert_eq!(l.expire(1500), vec![]);
        // The next event after the window closes carries the summary of the 7 suppressed.
        assert_eq!(l.admit(7, 2000), (Some(7), true));
        let _ = (0..5).map(|_| l.admit(7, 2100)).count();
        assert_eq!(l.expire(3100), vec![(7, 3)]);
        assert!(l.expire(9000).is_empty());
    }
}
