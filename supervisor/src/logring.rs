//! A fixed-capacity byte ring holding the newest output of one agent.
//!
//! Agent output is untrusted and unbounded; the supervisor keeps only the last `capacity`
//! bytes per agent so its memory never grows with uptime, and `nanoclaw logs` shows the tail.

use std::collections::VecDeque;

pub struct LogRing {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Bytes dropped off the front since the agent was installed.
    dropped: u64,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.capacity {
            self.dropped += (data.len() - self.capacity) as u64;
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.buf.drain(..overflow);
            self.dropped += overflow as u64;
        }
        self.buf.extend(data);
    }

    /// The last `n` lines (a partial first line after a wrap is dropped).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let (a, b) = self.buf.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        let text = String::from_utf8_lossy(&all);
        let mut lines: Vec<&str> = text.lines().collect();
        if self.dropped > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        let start = lines.len().saturating_sub(n);
        lines[start..].iter().map(|l| (*l).to_owned()).collect()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes held (for the per-agent state benchmark).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let mut r = LogRing::new(16);
        for i in 0..10 {
            r.push(format!("line {i}\n").as_bytes());
        }
        assert!(r.buf.len() <= 16);
        assert_eq!(r.tail(10), vec!["line 8".to_string(), "line 9".to_string()]);
        assert!(r.dropped() > 0);
    }

    #[test]
    fn tail_counts_lines() {
        let mut r = LogRing::new(1024);
        r.push(b"a\nb\nc\n");
        assert_eq!(r.tail(2), vec!["b", "c"]);
        assert_eq!(r.tail(0), Vec::<String>::new());
    }

    #[test]
    fn oversized_push_keeps_its_tail() {
        let mut r = LogRing::new(4);
        r.push(b"0123456789");
        assert_eq!(r.buf.iter().copied().collect::<Vec<_>>(), b"6789");
    }
}
