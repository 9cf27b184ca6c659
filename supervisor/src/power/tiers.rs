//! Battery tiers with hysteresis (pure). Rules are ordered by strictly descending
//! `below_percent`; the tier in force is the deepest rule the charge is below. To leave a tier
//! (towards a shallower one) the charge must climb `MARGIN_PCT` above its threshold, so a
//! battery hovering at a threshold does not flap agents between frozen and running. External
//! power (mains/USB online, or the battery charging or full) lifts every tier at once.
//!
//! A deeper tier keeps what shallower ones do unless it says otherwise for a class: with
//! `[{30: background freeze, normal throttle}, {10: normal stop}]`, at 8 % background agents
//! stay frozen and normal ones stop. `critical` agents are never touched.

use crate::config::manifest::Class;
use crate::config::policy::{BatteryAction, BatteryRule};

/// Climb above a tier's threshold needed to leave it, in percentage points.
pub const MARGIN_PCT: f64 = 5.0;

/// The tier in force given the charge, external power and the current tier.
pub fn tier(
    rules: &[BatteryRule],
    pct: f64,
    powered: bool,
    current: Option<usize>,
) -> Option<usize> {
    if powered {
        return None;
    }
    rules.iter().enumerate().rev().find_map(|(i, r)| {
        let sticky = current.is_some_and(|c| i <= c);
        let threshold = f64::from(r.below_percent) + if sticky { MARGIN_PCT } else { 0.0 };
        (pct < threshold).then_some(i)
    })
}

/// What tier `t` does to an agent of `class`.
pub fn action(rules: &[BatteryRule], t: Option<usize>, class: Class) -> Option<BatteryAction> {
    let t = t?;
    rules[..=t.min(rules.len().saturating_sub(1))]
        .iter()
        .rev()
        .find_map(|r| match class {
            Class::Background => r.background,
            Class::Normal => r.normal,
            Class::Critical => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<BatteryRule> {
        serde_json::from_str(
            r#"[ { "below_percent": 30, "background": "freeze", "normal": "throttle" },
                 { "below_percent": 10, "normal": "stop" } ]"#,
        )
        .unwrap()
    }

    #[test]
    fn thresholds_and_hysteresis() {
        let r = rules();
        assert_eq!(tier(&r, 50.0, false, None), None);
        assert_eq!(tier(&r, 29.9, false, None), Some(0));
        // Hovering around 30 %: stays in the tier until 35 %.
        assert_eq!(tier(&r, 31.0, false, Some(0)), Some(0));
        assert_eq!(tier(&r, 34.9, false, Some(0)), Some(0));
        assert_eq!(tier(&r, 35.0, false, Some(0)), None);
        // Deeper.
        assert_eq!(tier(&r, 9.0, false, Some(0)), Some(1));
        assert_eq!(tier(&r, 12.0, false, Some(1)), Some(1));
        assert_eq!(tier(&r, 16.0, false, Some(1)), Some(0));
        // Not entering a deeper tier early: 12 % from tier 0 stays tier 0.
        assert_eq!(tier(&r, 12.0, false, Some(0)), Some(0));
        // Power lifts everything.
        assert_eq!(tier(&r, 5.0, true, Some(1)), None);
    }

    #[test]
    fn deeper_tiers_inherit_and_critical_is_never_touched() {
        let r = rules();
        assert_eq!(action(&r, None, Class::Background), None);
        assert_eq!(
            action(&r, Some(0), Class::Background),
            Some(BatteryAction::Freeze)
        );
        assert_eq!(
            action(&r, Some(0), Class::Normal),
            Some(BatteryAction::Throttle)
        );
        assert_eq!(
            action(&r, Some(1), Class::Background),
            Some(BatteryAction::Freeze)
        );
        assert_eq!(
            action(&r, Some(1), Class::Normal),
            Some(BatteryAction::Stop)
        );
        assert_eq!(action(&r, Some(1), Class::Critical), None);
    }
}
